// The context keys (-c key=value) change what they say, and bad values are refused.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { readConfig } from '../lib/config';
import { TaskProtectionStack } from '../lib/task-protection-stack';
import { containerOf, environmentOf, logicalIdOf, quietly, render, synth, taskDefinitionOf, taskRoleGrants } from './helpers';

describe('context', () => {
  it('clusterName and the service names reach the cluster, the services, the IAM ARNs and the metric', () => {
    const { template } = synth({ clusterName: 'games', websocketServiceName: 'lobby', queueConsumerServiceName: 'jobs' });
    template.hasResourceProperties('AWS::ECS::Cluster', { ClusterName: 'games' });
    template.hasResourceProperties('AWS::ECS::Service', { ServiceName: 'lobby' });
    template.hasResourceProperties('AWS::ECS::Service', { ServiceName: 'jobs' });
    const tasks = 'arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/games/*';
    const cluster = 'arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:cluster/games';
    for (const [container, service] of [['websocket', 'lobby'], ['queue-consumer', 'jobs']]) {
      const ecs = taskRoleGrants(template, container).statements.filter((s) => s.Action[0].startsWith('ecs:'));
      assert.deepEqual(ecs.map((s) => [s.Resource, s.Condition]), [
        [[tasks], undefined],
        [[tasks], undefined],
        [[tasks], undefined],
        [['*'], { ArnEquals: { 'ecs:cluster': cluster } }],
        [[`arn:\${AWS::Partition}:ecs:\${AWS::Region}:\${AWS::AccountId}:service/games/${service}`], undefined],
      ], container);
    }
    template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalingPolicy', {
      TargetTrackingScalingPolicyConfiguration: Match.objectLike({
        CustomizedMetricSpecification: Match.objectLike({
          Dimensions: [{ Name: 'ClusterName', Value: 'games' }, { Name: 'ServiceName', Value: 'lobby' }],
        }),
      }),
    });
    assert.equal(environmentOf(template, 'websocket').METRICS_SERVICE_NAME, 'lobby');
    assert.equal(environmentOf(template, 'queue-consumer').METRICS_SERVICE_NAME, 'jobs');
  });

  it('task counts and the connections target come from context', () => {
    const { template } = synth({ websocketMinTasks: '2', websocketMaxTasks: '4', connectionsPerTask: '250', queueConsumerMaxTasks: '3' });
    template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', { MinCapacity: 2, MaxCapacity: 4 });
    template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', { MinCapacity: 1, MaxCapacity: 3 });
    template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalingPolicy', {
      TargetTrackingScalingPolicyConfiguration: Match.objectLike({ TargetValue: 250 }),
    });
  });

  it('queueMaxReceiveCount sets after how many receives the dead-letter queue takes a message', () => {
    const redrive = (context: Record<string, unknown>) => {
      const queues = Object.values(synth(context).template.findResources('AWS::SQS::Queue'));
      return queues.map((q) => q.Properties.RedrivePolicy).filter((p) => p !== undefined);
    };
    assert.deepEqual(redrive({}).map((p) => p.maxReceiveCount), [3], 'the default');
    assert.deepEqual(redrive({ queueMaxReceiveCount: '5' }).map((p) => p.maxReceiveCount), [5]);
    assert.deepEqual(redrive({ queueMaxReceiveCount: 1000 }).map((p) => p.maxReceiveCount), [1000], 'SQS\'s largest');
    assert.throws(
      () => readConfig(new App({ context: { queueMaxReceiveCount: '0' } }).node),
      /context queueMaxReceiveCount=0: expected a whole number from 1 to 1000/,
    );
  });

  it('architecture=X86_64 builds amd64 images and runs X86_64 tasks', () => {
    const { template } = synth({ architecture: 'X86_64' });
    for (const name of ['websocket', 'queue-consumer']) {
      assert.equal(taskDefinitionOf(template, name).props.RuntimePlatform.CpuArchitecture, 'X86_64');
    }
  });

  it('certificateArn adds an HTTPS listener on 443 and turns port 80 into a redirect', () => {
    const certificateArn = 'arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000';
    const { template } = synth({ certificateArn });
    template.resourceCountIs('AWS::ElasticLoadBalancingV2::Listener', 2);
    template.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
      Port: 443,
      Protocol: 'HTTPS',
      Certificates: [{ CertificateArn: certificateArn }],
      DefaultActions: [Match.objectLike({ Type: 'forward' })],
    });
    template.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
      Port: 80,
      DefaultActions: [Match.objectLike({ Type: 'redirect', RedirectConfig: Match.objectLike({ Protocol: 'HTTPS', Port: '443' }) })],
    });
    template.hasResourceProperties('AWS::EC2::SecurityGroup', {
      SecurityGroupIngress: Match.arrayWith([Match.objectLike({ FromPort: 443, CidrIp: '0.0.0.0/0' })]),
    });
  });

  it('certificateArn: the HTTPS listener uses the post-quantum TLS policy cdk.json\'s ELB flag asks for, else TLS 1.3/1.2', () => {
    const certificateArn = 'arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000';
    const https = (context: Record<string, unknown>) =>
      Object.values(synth({ certificateArn, ...context }).template.findResources('AWS::ElasticLoadBalancingV2::Listener'))
        .map((l) => l.Properties)
        .filter((p) => p.Protocol === 'HTTPS');
    assert.deepEqual(https({}).map((p) => p.SslPolicy), ['ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09']);
    assert.deepEqual(
      https({ '@aws-cdk/aws-elasticloadbalancingv2:usePostQuantumTlsPolicy': false }).map((p) => p.SslPolicy),
      ['ELBSecurityPolicy-TLS13-1-2-2021-06'],
    );
  });

  it('certificateArn: the outputs are https:// for the page and wss:// for the socket; http:// and ws:// without one', () => {
    const certificateArn = 'arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000';
    const outputs = (context: Record<string, string>) => {
      const all = synth(context).template.toJSON().Outputs;
      return [render(all.WebSocketUrl.Value), render(all.WebSocketSocketUrl.Value)];
    };
    const lb = logicalIdOf(synth().template, 'AWS::ElasticLoadBalancingV2::LoadBalancer', () => true);
    assert.deepEqual(outputs({ certificateArn }), [`https://\${${lb}.DNSName}/`, `wss://\${${lb}.DNSName}/ws`]);
    assert.deepEqual(outputs({}), [`http://\${${lb}.DNSName}/`, `ws://\${${lb}.DNSName}/ws`]);
  });

  it('taskSubnets=private puts the tasks in private subnets behind one NAT gateway, without public IPs', () => {
    const { template } = synth({ taskSubnets: 'private' });
    template.resourceCountIs('AWS::EC2::NatGateway', 1);
    template.resourceCountIs('AWS::EC2::Subnet', 4);
    template.hasResourceProperties('AWS::EC2::VPCEndpoint', { VpcEndpointType: 'Gateway' });
    for (const service of Object.values(template.findResources('AWS::ECS::Service'))) {
      assert.equal(service.Properties.NetworkConfiguration.AwsvpcConfiguration.AssignPublicIp, 'DISABLED');
    }
    // The stop timeouts do not depend on the network.
    assert.equal(containerOf(template, 'queue-consumer').StopTimeout, 120);
  });

  it('refuses bad values, naming the key', () => {
    const bad: Record<string, string>[] = [
      { websocketMaxTasks: 'lots' },
      { connectionsPerTask: '0' },
      { websocketMinTasks: '5', websocketMaxTasks: '2' },
      { queueJobSecs: '0' },
      { queueAcceptableLatencySecs: 'soon' },
      { queueMaxReceiveCount: '0' },
      { queueMaxReceiveCount: '1001' },
      { queueMaxReceiveCount: '2.5' },
      { architecture: 'sparc' },
      { taskSubnets: 'isolated' },
      { clusterName: 'no spaces' },
      { websocketServiceName: 'same', queueConsumerServiceName: 'same' },
    ];
    for (const context of bad) {
      const key = Object.keys(context).pop()!;
      assert.throws(() => readConfig(new App({ context }).node), new RegExp(key.replace(/Name$/, '')), JSON.stringify(context));
    }
  });
});

describe('context websocketMinTasks', () => {
  it('refuses 0, saying that the service could not scale out again from zero tasks', () => {
    assert.throws(
      () => readConfig(new App({ context: { websocketMinTasks: '0' } }).node),
      /websocketMinTasks=0: the websocket service cannot scale out from zero tasks \(with no task running, nothing publishes the Connections metric/,
    );
    assert.equal(readConfig(new App({ context: { websocketMinTasks: '1' } }).node).websocket.minTasks, 1);
  });
});

describe('context vpcId', () => {
  it('looks the VPC up (a recorded lookup, no new VPC) when an account and region are known', () => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'cdk-test-')), context: { vpcId: 'vpc-0123456789abcdef0' } });
    const stack = new TaskProtectionStack(app, 'TaskProtectionStack', {
      config: readConfig(app.node),
      env: { account: '123456789012', region: 'us-east-1' }, // AWS's documentation placeholders
    });
    // The dummy VPC a lookup returns has subnet IDs CloudFormation's schema check warns about.
    const assembly = quietly(() => app.synth());
    const lookups = assembly.manifest.missing ?? [];
    assert.deepEqual(lookups.map((m) => [m.provider, (m.props as { filter?: Record<string, string> }).filter]), [
      ['vpc-provider', { 'vpc-id': 'vpc-0123456789abcdef0' }],
    ]);
    Template.fromStack(stack).resourceCountIs('AWS::EC2::VPC', 0);
  });
});
