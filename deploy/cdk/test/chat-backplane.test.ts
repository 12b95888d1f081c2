// The optional chat backplane (-c chatBackplane=true): an ElastiCache Serverless Valkey cache in
// isolated subnets that only the websocket tasks can reach, and its URL in their environment.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { readConfig } from '../lib/config';
import { TaskProtectionStack } from '../lib/task-protection-stack';
import { environmentOf, logicalIdOf, quietly, render, synth } from './helpers';

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

const on = synth({ chatBackplane: 'true' }).template;
const off = synth().template;
const resourcesOf = (template: Template): Record<string, Json> => template.toJSON().Resources;

const cacheIdOf = (template: Template) => logicalIdOf(template, 'AWS::ElastiCache::ServerlessCache', () => true);
const websocketSgOf = (template: Template) =>
  logicalIdOf(template, 'AWS::EC2::SecurityGroup', (p) => p.GroupDescription.startsWith('Tasks of the websocket'));
const isolatedSubnetsOf = (template: Template) =>
  Object.entries(template.findResources('AWS::EC2::Subnet'))
    .filter(([, r]) => (r.Properties.Tags as Json[]).some((t) => t.Key === 'aws-cdk:subnet-type' && t.Value === 'Isolated'))
    .map(([id]) => id)
    .sort();

describe('chatBackplane=true', () => {
  it('creates exactly one ElastiCache Serverless cache, engine valkey 8, in the isolated subnets', () => {
    on.resourceCountIs('AWS::ElastiCache::ServerlessCache', 1);
    const cache = resourcesOf(on)[cacheIdOf(on)].Properties;
    assert.equal(cache.Engine, 'valkey');
    assert.equal(cache.MajorEngineVersion, '8');
    assert.equal(cache.ServerlessCacheName, 'task-protection-chat');
    const isolated = isolatedSubnetsOf(on);
    assert.equal(isolated.length, 2); // one per AZ
    assert.deepEqual(cache.SubnetIds.map((s: Json) => s.Ref).sort(), isolated);
  });

  it('puts the cache in subnets with no route to the internet (no internet or NAT gateway route)', () => {
    const isolated = new Set(isolatedSubnetsOf(on));
    const routeTables = Object.values(on.findResources('AWS::EC2::SubnetRouteTableAssociation'))
      .filter((a) => isolated.has(a.Properties.SubnetId.Ref))
      .map((a) => a.Properties.RouteTableId.Ref);
    assert.equal(routeTables.length, 2);
    const routes = Object.values(on.findResources('AWS::EC2::Route')).filter((r) => routeTables.includes(r.Properties.RouteTableId.Ref));
    assert.deepEqual(routes, []);
  });

  it('bounds the cost: at most 1 GB stored and 5,000 ECPUs a second', () => {
    assert.deepEqual(resourcesOf(on)[cacheIdOf(on)].Properties.CacheUsageLimits, {
      DataStorage: { Maximum: 1, Unit: 'GB' },
      ECPUPerSecond: { Maximum: 5000 },
    });
  });

  it('admits only TCP 6379 from the websocket tasks\' security group into the cache', () => {
    const cache = resourcesOf(on)[cacheIdOf(on)].Properties;
    assert.equal(cache.SecurityGroupIds.length, 1);
    const cacheSg = cache.SecurityGroupIds[0]['Fn::GetAtt'][0];
    const taskSg = websocketSgOf(on);
    // No inline ingress (no CIDR), and exactly one ingress resource on the cache's group.
    assert.equal(resourcesOf(on)[cacheSg].Properties.SecurityGroupIngress, undefined);
    const ingress = Object.values(on.findResources('AWS::EC2::SecurityGroupIngress'))
      .map((r) => r.Properties)
      .filter((r) => render(r.GroupId) === `\${${cacheSg}.GroupId}`);
    assert.deepEqual(
      ingress.map((r) => [r.IpProtocol, r.FromPort, r.ToPort, render(r.SourceSecurityGroupId), r.CidrIp, r.CidrIpv6]),
      [['tcp', 6379, 6379, `\${${taskSg}.GroupId}`, undefined, undefined]],
    );
    // The cache opens no connections: its only egress rule is CDK's match-nothing rule.
    assert.deepEqual(resourcesOf(on)[cacheSg].Properties.SecurityGroupEgress.map((e: Json) => e.CidrIp), ['255.255.255.255/32']);
  });

  it('lets the websocket tasks, which otherwise only reach HTTPS, out to the cache on 6379', () => {
    const cacheSg = resourcesOf(on)[cacheIdOf(on)].Properties.SecurityGroupIds[0]['Fn::GetAtt'][0];
    const taskSg = websocketSgOf(on);
    const egress = Object.values(on.findResources('AWS::EC2::SecurityGroupEgress'))
      .map((r) => r.Properties)
      .filter((r) => render(r.GroupId) === `\${${taskSg}.GroupId}`);
    assert.deepEqual(
      egress.map((r) => [r.IpProtocol, r.FromPort, r.ToPort, render(r.DestinationSecurityGroupId)]),
      [['tcp', 6379, 6379, `\${${cacheSg}.GroupId}`]],
    );
    assert.deepEqual(resourcesOf(on)[taskSg].Properties.SecurityGroupEgress.map((e: Json) => e.FromPort), [443]);
  });

  it('gives the websocket container CHAT_BACKPLANE_URL = rediss://<cache endpoint address>:<port>', () => {
    const id = cacheIdOf(on);
    assert.equal(render(environmentOf(on, 'websocket').CHAT_BACKPLANE_URL), `rediss://\${${id}.Endpoint.Address}:\${${id}.Endpoint.Port}`);
    assert.equal(environmentOf(on, 'queue-consumer').CHAT_BACKPLANE_URL, undefined);
  });

  it('leaves the rest of the network as it was: the public subnets keep their CIDR blocks', () => {
    const cidrs = (template: Template) =>
      Object.values(template.findResources('AWS::EC2::Subnet'))
        .filter((r) => r.Properties.MapPublicIpOnLaunch)
        .map((r) => r.Properties.CidrBlock)
        .sort();
    assert.deepEqual(cidrs(on), cidrs(off));
    on.resourceCountIs('AWS::EC2::NatGateway', 0);
  });

  it('with an existing VPC (vpcId) uses its private subnets when it has no isolated ones', () => {
    const app = new App({
      outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'cdk-test-')),
      context: { vpcId: 'vpc-0123456789abcdef0', chatBackplane: 'true' },
    });
    const stack = new TaskProtectionStack(app, 'TaskProtectionStack', {
      config: readConfig(app.node),
      env: { account: '123456789012', region: 'us-east-1' }, // AWS's documentation placeholders
    });
    quietly(() => app.synth()); // the dummy VPC of an unanswered lookup
    const cache = resourcesOf(Template.fromStack(stack))[cacheIdOf(Template.fromStack(stack))].Properties;
    assert.deepEqual(cache.SubnetIds, stack.vpc.privateSubnets.map((s) => s.subnetId));
  });
});

describe('chatBackplane off (the default)', () => {
  it('creates no cache, sets no CHAT_BACKPLANE_URL and adds no isolated subnets', () => {
    off.resourceCountIs('AWS::ElastiCache::ServerlessCache', 0);
    assert.equal(environmentOf(off, 'websocket').CHAT_BACKPLANE_URL, undefined);
    assert.deepEqual(isolatedSubnetsOf(off), []);
    off.resourceCountIs('AWS::EC2::Subnet', 2);
    assert.equal(Object.keys(off.findResources('AWS::EC2::SecurityGroupEgress')).length, 1); // the ALB's, to the tasks
  });

  it('is what chatBackplane=false says too', () => {
    synth({ chatBackplane: 'false' }).template.resourceCountIs('AWS::ElastiCache::ServerlessCache', 0);
  });
});

describe('context chatBackplane', () => {
  it('refuses anything but true or false, and a cluster name the cache cannot carry', () => {
    assert.throws(() => readConfig(new App({ context: { chatBackplane: 'yes' } }).node), /chatBackplane=yes/);
    assert.throws(
      () => readConfig(new App({ context: { chatBackplane: 'true', clusterName: 'a'.repeat(40) } }).node),
      /clusterName=.*chatBackplane=true/,
    );
    assert.doesNotThrow(() => readConfig(new App({ context: { chatBackplane: 'TRUE', clusterName: 'Games_2' } }).node));
  });
});
