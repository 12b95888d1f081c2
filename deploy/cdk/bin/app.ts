#!/usr/bin/env node
// The CDK app: `npx cdk deploy` from deploy/cdk (see docs/DEPLOY.md).
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { readConfig } from '../lib/config';
import { TaskProtectionStack } from '../lib/task-protection-stack';

const app = new App();
const config = readConfig(app.node);

new TaskProtectionStack(app, 'TaskProtectionStack', {
  config,
  description: 'ECS task scale-in protection: the websocket server and the queue consumer on Fargate',
  // Environment-agnostic (synthesizes with no AWS account or credentials), except with
  // -c vpcId=..., where looking the VPC up needs the account and region the CLI resolves from
  // your credentials (CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION).
  env: config.vpcId
    ? { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION }
    : undefined,
});

// cdk-nag's AWS Solutions rules on every resource, through CDK's policy validation: a finding
// that is not accepted (lib/nag.ts, next to its resource, with the reason) fails `cdk synth`.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
