// cdk-nag's AWS Solutions rules, as bin/app.ts applies them: every finding is acknowledged next
// to its resource with a reason, and one that is not fails the synthesis.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as fs from 'fs';
import * as path from 'path';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { buildStack, quietly } from './helpers';

interface Report {
  pluginReports: { pluginName?: string; summary?: { status?: string }; violations?: unknown[] }[];
}

function readReport(outdir: string): Report {
  return JSON.parse(fs.readFileSync(path.join(outdir, 'validation-report.json'), 'utf8'));
}

describe('cdk-nag AwsSolutionsChecks', () => {
  const contexts: Record<string, string>[] = [
    {},
    { taskSubnets: 'private', certificateArn: 'arn:aws:acm:us-east-1:123456789012:certificate/x' },
    { chatBackplane: 'true' },
    { queueConsumerMinTasks: '0' }, // the scale-from-zero step policy and its alarm
  ];
  for (const context of contexts) {
    it(`finds no unacknowledged error or warning (context ${JSON.stringify(context)})`, () => {
      const { app, outdir } = buildStack(context, { nag: true });
      app.synth(); // throws when a plugin reports a violation
      const report = readReport(outdir);
      const violations = report.pluginReports.flatMap((r) => r.violations ?? []);
      assert.deepEqual(violations, []);
    });
  }

  it('fails the synthesis on a finding nobody acknowledged (an SSH port open to the world)', () => {
    const { app, stack, outdir } = buildStack({}, { nag: true });
    const sg = new ec2.SecurityGroup(stack, 'Careless', { vpc: stack.vpc });
    sg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(22));
    assert.throws(() => quietly(() => app.synth()), /Validation failed/);
    const text = fs.readFileSync(path.join(outdir, 'validation-report.json'), 'utf8');
    assert.match(text, /AwsSolutions-EC23/);
  });
});
