import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App, Validations } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { readConfig } from '../lib/config';
import { TaskProtectionStack } from '../lib/task-protection-stack';

export interface Synthesized {
  readonly app: App;
  readonly stack: TaskProtectionStack;
  readonly template: Template;
  readonly outdir: string;
}

/**
 * The "context" of cdk.json: the feature flags `cdk synth` applies (the CLI passes them to the
 * app; a test's App does not read cdk.json by itself). Tests run with them so that they see the
 * template `cdk synth` writes, e.g. the post-quantum TLS policy the ELB flag asks for.
 */
export const CDK_JSON_CONTEXT: Record<string, unknown> = JSON.parse(
  fs.readFileSync(path.join(__dirname, '..', '..', 'cdk.json'), 'utf8'),
).context;

/**
 * Builds the app's stack as bin/app.ts does, with cdk.json's context and then the given context
 * on top, in a temporary cdk.out.
 */
export function buildStack(context: Record<string, unknown> = {}, options: { nag?: boolean } = {}) {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'cdk-test-'));
  const app = new App({ outdir, context: { ...CDK_JSON_CONTEXT, ...context } });
  const stack = new TaskProtectionStack(app, 'TaskProtectionStack', { config: readConfig(app.node) });
  if (options.nag) Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
  return { app, stack, outdir };
}

/** Builds and synthesizes the stack; the Template is what `cdk synth` would write. */
export function synth(context: Record<string, unknown> = {}): Synthesized {
  const { app, stack, outdir } = buildStack(context);
  const template = Template.fromStack(stack);
  return { app, stack, template, outdir };
}

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * Renders an intrinsic the way CloudFormation would, with pseudo parameters and references
 * left as ${...}: {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ...]]} becomes
 * "arn:${AWS::Partition}:...". Lets tests compare ARNs as readable strings.
 */
export function render(value: Json): string {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') {
    if ('Ref' in value) return `\${${value.Ref}}`;
    if ('Fn::GetAtt' in value) return `\${${value['Fn::GetAtt'].join('.')}}`;
    if ('Fn::Join' in value) {
      const [sep, parts] = value['Fn::Join'];
      return (parts as Json[]).map(render).join(sep);
    }
  }
  throw new Error(`cannot render ${JSON.stringify(value)}`);
}

/** The logical ID of a resource of this type whose properties match the predicate (exactly one). */
export function logicalIdOf(template: Template, type: string, predicate: (props: Json) => boolean): string {
  const ids = Object.entries(template.findResources(type))
    .filter(([, r]) => predicate((r as Json).Properties ?? {}))
    .map(([id]) => id);
  if (ids.length !== 1) throw new Error(`expected one ${type}, found ${ids.length}: ${ids.join(', ')}`);
  return ids[0];
}

/** The task definition of the container with this name. */
export function taskDefinitionOf(template: Template, containerName: string): { id: string; props: Json } {
  const id = logicalIdOf(template, 'AWS::ECS::TaskDefinition', (p) =>
    (p.ContainerDefinitions ?? []).some((c: Json) => c.Name === containerName),
  );
  return { id, props: template.toJSON().Resources[id].Properties };
}

export function containerOf(template: Template, containerName: string): Json {
  const { props } = taskDefinitionOf(template, containerName);
  return props.ContainerDefinitions.find((c: Json) => c.Name === containerName);
}

export function environmentOf(template: Template, containerName: string): Record<string, Json> {
  const env: Record<string, Json> = {};
  for (const { Name, Value } of containerOf(template, containerName).Environment ?? []) env[Name] = Value;
  return env;
}

/** A policy statement's Condition with every value rendered (see render): `{ArnEquals: {key: "arn:..."}}`. */
function renderCondition(condition: Json): Json {
  if (condition === undefined) return undefined;
  return Object.fromEntries(
    Object.entries(condition).map(([operator, keys]) => [
      operator,
      Object.fromEntries(
        Object.entries(keys as Record<string, Json>).map(([key, value]) => [
          key,
          Array.isArray(value) ? value.map(render) : render(value),
        ]),
      ),
    ]),
  );
}

/** What the task role of this container may do: every statement of every policy on the role. */
export function taskRoleGrants(template: Template, containerName: string) {
  const { props } = taskDefinitionOf(template, containerName);
  const roleId: string = props.TaskRoleArn['Fn::GetAtt'][0];
  const role = template.toJSON().Resources[roleId].Properties;
  const policies = Object.values(template.findResources('AWS::IAM::Policy')).filter((p: Json) =>
    (p.Properties.Roles ?? []).some((r: Json) => r.Ref === roleId),
  ) as Json[];
  const managedPolicies = Object.values(template.findResources('AWS::IAM::ManagedPolicy')).filter((p: Json) =>
    (p.Properties.Roles ?? []).some((r: Json) => r.Ref === roleId),
  );
  const statements = policies.flatMap((p) => p.Properties.PolicyDocument.Statement as Json[]).map((s) => ({
    Sid: s.Sid,
    Effect: s.Effect,
    Action: ([] as string[]).concat(s.Action).sort(),
    Resource: ([] as Json[]).concat(s.Resource).map(render),
    Condition: renderCondition(s.Condition),
  }));
  return {
    roleId,
    statements,
    policyCount: policies.length,
    managedPolicyArns: role.ManagedPolicyArns ?? [],
    inlinePolicies: role.Policies ?? [],
    attachedManagedPolicies: managedPolicies.length,
  };
}

/** Runs fn with stderr and console output dropped: validation reports a test expects. */
export function quietly<T>(fn: () => T): T {
  const write = process.stderr.write;
  const { error, warn, log } = console;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  console.error = console.warn = console.log = () => undefined;
  try {
    return fn();
  } finally {
    process.stderr.write = write;
    Object.assign(console, { error, warn, log });
  }
}
