// What the deployed stack must be, asserted on the synthesized CloudFormation template.
// Run: npm test (tsc, then node's test runner on dist/test).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as fs from 'fs';
import * as path from 'path';
import { Token } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import {
  containerOf,
  environmentOf,
  logicalIdOf,
  render,
  synth,
  taskDefinitionOf,
  taskRoleGrants,
} from './helpers';

const TASKS = (cluster: string) => `arn:\${AWS::Partition}:ecs:\${AWS::Region}:\${AWS::AccountId}:task/${cluster}/*`;
const CLUSTER = (cluster: string) => `arn:\${AWS::Partition}:ecs:\${AWS::Region}:\${AWS::AccountId}:cluster/${cluster}`;
const SERVICE = (cluster: string, service: string) =>
  `arn:\${AWS::Partition}:ecs:\${AWS::Region}:\${AWS::AccountId}:service/${cluster}/${service}`;

// One synthesis with the defaults, shared by the tests that read it.
const { template, stack, outdir } = synth();
const resources = () => template.toJSON().Resources as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const queueId = logicalIdOf(template, 'AWS::SQS::Queue', (p) => p.RedrivePolicy !== undefined);
const dlqId = logicalIdOf(template, 'AWS::SQS::Queue', (p) => p.RedrivePolicy === undefined);

/** The scalable target (desired count) of the ECS service with this name. */
function scalableTargetOf(serviceName: string) {
  const serviceId = logicalIdOf(template, 'AWS::ECS::Service', (p) => p.ServiceName === serviceName);
  const id = logicalIdOf(template, 'AWS::ApplicationAutoScaling::ScalableTarget', (p) =>
    render(p.ResourceId).endsWith(`/\${${serviceId}.Name}`),
  );
  return { id, props: resources()[id].Properties };
}

/**
 * The ECS statements both task roles hold (lib/task-role.ts): protection of the task itself, and
 * the drain watcher's reads of its own service and of that service's tasks (issue 17's fleet
 * rule: ListTasks, DescribeTasks and GetTaskProtection on every task of the service).
 */
const ECS_STATEMENTS = (cluster: string, service: string) => [
  {
    Sid: 'ProtectOwnTask',
    Effect: 'Allow',
    Action: ['ecs:UpdateTaskProtection'],
    Resource: [TASKS(cluster)],
    Condition: undefined,
  },
  {
    Sid: 'ReadTaskProtectionInThisCluster',
    Effect: 'Allow',
    Action: ['ecs:GetTaskProtection'],
    Resource: [TASKS(cluster)],
    Condition: undefined,
  },
  {
    Sid: 'DescribeTasksInThisCluster',
    Effect: 'Allow',
    Action: ['ecs:DescribeTasks'],
    Resource: [TASKS(cluster)],
    Condition: undefined,
  },
  {
    // ListTasks takes no task or service ARN: any resource, but only with this cluster named.
    Sid: 'ListTasksInThisCluster',
    Effect: 'Allow',
    Action: ['ecs:ListTasks'],
    Resource: ['*'],
    Condition: { ArnEquals: { 'ecs:cluster': CLUSTER(cluster) } },
  },
  {
    Sid: 'DescribeOwnService',
    Effect: 'Allow',
    Action: ['ecs:DescribeServices'],
    Resource: [SERVICE(cluster, service)],
    Condition: undefined,
  },
];

describe('the websocket task role', () => {
  it('may protect its task, read protection and describe the cluster\'s tasks, list them in this cluster only, and describe its own service', () => {
    const grants = taskRoleGrants(template, 'websocket');
    assert.deepEqual(grants.statements, ECS_STATEMENTS('task-protection', 'websocket'));
  });

  it('has no other policy: one inline policy document, no managed policies', () => {
    const grants = taskRoleGrants(template, 'websocket');
    assert.equal(grants.policyCount, 1);
    assert.deepEqual(grants.managedPolicyArns, []);
    assert.deepEqual(grants.inlinePolicies, []);
    assert.equal(grants.attachedManagedPolicies, 0);
  });
});

describe('the queue-consumer task role', () => {
  it('holds the drain watcher\'s ECS statements as the websocket does, and may only receive, delete and hide messages of its own queue, and read its attributes', () => {
    const grants = taskRoleGrants(template, 'queue-consumer');
    assert.deepEqual(grants.statements, [
      ...ECS_STATEMENTS('task-protection', 'queue-consumer'),
      {
        Sid: 'ConsumeOwnQueue',
        Effect: 'Allow',
        Action: ['sqs:ChangeMessageVisibility', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes', 'sqs:ReceiveMessage'],
        Resource: [`\${${queueId}.Arn}`],
        Condition: undefined,
      },
    ]);
  });

  it('has no other policy: one inline policy document, no managed policies', () => {
    const grants = taskRoleGrants(template, 'queue-consumer');
    assert.equal(grants.policyCount, 1);
    assert.deepEqual(grants.managedPolicyArns, []);
    assert.deepEqual(grants.inlinePolicies, []);
    assert.equal(grants.attachedManagedPolicies, 0);
  });

  it('is not granted anything by the queues\' own resource policies (they only deny plain HTTP)', () => {
    for (const policy of Object.values(template.findResources('AWS::SQS::QueuePolicy'))) {
      for (const statement of policy.Properties.PolicyDocument.Statement) {
        assert.equal(statement.Effect, 'Deny');
        assert.deepEqual(statement.Condition, { Bool: { 'aws:SecureTransport': 'false' } });
      }
    }
  });
});

describe('the websocket service', () => {
  it('is health-checked by the ALB on /healthz: 200, thresholds 2/2, every 10 s, 5 s timeout', () => {
    template.hasResourceProperties('AWS::ElasticLoadBalancingV2::TargetGroup', {
      HealthCheckPath: '/healthz',
      Matcher: { HttpCode: '200' },
      HealthyThresholdCount: 2,
      UnhealthyThresholdCount: 2,
      HealthCheckIntervalSeconds: 10,
      HealthCheckTimeoutSeconds: 5,
      Port: 3000,
      TargetType: 'ip',
    });
  });

  it('keeps a deregistering task\'s connections for 300 s', () => {
    template.hasResourceProperties('AWS::ElasticLoadBalancingV2::TargetGroup', {
      TargetGroupAttributes: Match.arrayWith([{ Key: 'deregistration_delay.timeout_seconds', Value: '300' }]),
    });
  });

  it('sits behind an internet-facing ALB whose idle timeout is 60 s (the server pings every 25 s)', () => {
    template.hasResourceProperties('AWS::ElasticLoadBalancingV2::LoadBalancer', {
      Scheme: 'internet-facing',
      LoadBalancerAttributes: Match.arrayWith([{ Key: 'idle_timeout.timeout_seconds', Value: '60' }]),
    });
    template.resourceCountIs('AWS::ElasticLoadBalancingV2::Listener', 1);
    template.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', { Port: 80, Protocol: 'HTTP' });
  });

  it('gives its container 30 s between SIGTERM and SIGKILL', () => {
    assert.equal(containerOf(template, 'websocket').StopTimeout, 30);
  });

  it('is rolled 100 %/200 % with the circuit breaker rolling back, 30 s grace, and no DesiredCount', () => {
    template.hasResourceProperties('AWS::ECS::Service', {
      ServiceName: 'websocket',
      DesiredCount: Match.absent(),
      HealthCheckGracePeriodSeconds: 30,
      DeploymentConfiguration: Match.objectLike({
        MinimumHealthyPercent: 100,
        MaximumPercent: 200,
        DeploymentCircuitBreaker: { Enable: true, Rollback: true },
      }),
    });
  });

  it('runs with the documented settings and the EMF metrics on', () => {
    assert.deepEqual(environmentOf(template, 'websocket'), {
      PORT: '3000',
      LOG_FORMAT: 'json',
      PROTECTION_BACKEND: 'auto',
      PROTECTION_DURATION_MINUTES: '30',
      SHUTDOWN_TIMEOUT_SECS: '10',
      DRAIN_WATCH_INTERVAL_SECS: '30',
      METRICS_EMF: 'on',
      METRICS_INTERVAL_SECS: '60',
      METRICS_SERVICE_NAME: 'websocket',
      HTTP_IDLE_TIMEOUT_SECS: '75',
    });
    assert.deepEqual(containerOf(template, 'websocket').PortMappings, [{ ContainerPort: 3000, Protocol: 'tcp' }]);
  });

  it('scales 1-10 tasks by target tracking on the average ECSTaskProtection/Connections per task', () => {
    const target = scalableTargetOf('websocket');
    assert.deepEqual([target.props.MinCapacity, target.props.MaxCapacity], [1, 10]);
    template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalingPolicy', {
      ScalingTargetId: { Ref: target.id },
      PolicyType: 'TargetTrackingScaling',
      TargetTrackingScalingPolicyConfiguration: {
        CustomizedMetricSpecification: {
          Namespace: 'ECSTaskProtection',
          MetricName: 'Connections',
          Dimensions: [
            { Name: 'ClusterName', Value: 'task-protection' },
            { Name: 'ServiceName', Value: 'websocket' },
          ],
          Statistic: 'Average',
          Unit: 'Count',
        },
        TargetValue: 1000,
        ScaleInCooldown: 300,
        ScaleOutCooldown: 60,
      },
    });
  });

  it('tracks the metric under the dimensions the server publishes: the cluster\'s and the service\'s own names', () => {
    const policy = Object.values(template.findResources('AWS::ApplicationAutoScaling::ScalingPolicy')).find(
      (p) => p.Properties.PolicyType === 'TargetTrackingScaling',
    );
    const dims = Object.fromEntries(
      policy!.Properties.TargetTrackingScalingPolicyConfiguration.CustomizedMetricSpecification.Dimensions.map(
        (d: { Name: string; Value: string }) => [d.Name, d.Value],
      ),
    );
    const service = Object.values(template.findResources('AWS::ECS::Service')).find((s) => s.Properties.ServiceName === 'websocket');
    const cluster = Object.values(template.findResources('AWS::ECS::Cluster'))[0];
    assert.equal(dims.ClusterName, cluster.Properties.ClusterName);
    assert.equal(dims.ServiceName, service!.Properties.ServiceName);
    assert.equal(dims.ServiceName, environmentOf(template, 'websocket').METRICS_SERVICE_NAME);
  });

  it('admits traffic to its tasks only from the ALB, on port 3000', () => {
    const taskSg = logicalIdOf(template, 'AWS::EC2::SecurityGroup', (p) => p.GroupDescription.startsWith('Tasks of the websocket'));
    const albSg = logicalIdOf(template, 'AWS::EC2::SecurityGroup', (p) => p.GroupDescription.startsWith('Public ALB'));
    assert.equal(resources()[taskSg].Properties.SecurityGroupIngress, undefined);
    const ingress = Object.values(template.findResources('AWS::EC2::SecurityGroupIngress')).map((r) => r.Properties);
    assert.deepEqual(
      ingress.map((r) => [render(r.GroupId), render(r.SourceSecurityGroupId), r.FromPort, r.ToPort]),
      [[`\${${taskSg}.GroupId}`, `\${${albSg}.GroupId}`, 3000, 3000]],
    );
  });
});

describe('the queue-consumer service', () => {
  it('gives its container 120 s between SIGTERM and SIGKILL, the Fargate maximum', () => {
    assert.equal(containerOf(template, 'queue-consumer').StopTimeout, 120);
  });

  it('has the binary\'s own health check: every 10 s, 3 retries, 5 s timeout, 10 s start period', () => {
    assert.deepEqual(containerOf(template, 'queue-consumer').HealthCheck, {
      Command: ['CMD', '/usr/local/bin/queue-consumer', 'health'],
      Interval: 10,
      Retries: 3,
      Timeout: 5,
      StartPeriod: 10,
    });
  });

  it('reads its queue with the documented settings and the EMF metrics on', () => {
    const env = environmentOf(template, 'queue-consumer');
    assert.deepEqual(env.QUEUE_URL, { Ref: queueId });
    assert.deepEqual({ ...env, QUEUE_URL: 'x' }, {
      QUEUE_URL: 'x',
      LOG_FORMAT: 'json',
      VISIBILITY_TIMEOUT_SECS: '60',
      WORKER_CONCURRENCY: '1',
      SHUTDOWN_TIMEOUT_SECS: '100',
      METRICS_EMF: 'on',
      METRICS_INTERVAL_SECS: '60',
      METRICS_SERVICE_NAME: 'queue-consumer',
    });
  });

  it('has no load balancer and admits no inbound traffic', () => {
    // With cdk.json's @aws-cdk/aws-ecs:removeEmptyLoadBalancers, CDK writes an empty list (so that
    // an update removes load balancers a service had); without the flag it leaves the key out.
    const service = Object.values(template.findResources('AWS::ECS::Service')).find((s) => s.Properties.ServiceName === 'queue-consumer');
    assert.deepEqual(service!.Properties.LoadBalancers ?? [], []);
    const sg = logicalIdOf(template, 'AWS::EC2::SecurityGroup', (p) => p.GroupDescription.startsWith('Tasks of the queue-consumer'));
    assert.equal(resources()[sg].Properties.SecurityGroupIngress, undefined);
    const ingress = Object.values(template.findResources('AWS::EC2::SecurityGroupIngress'));
    assert.ok(ingress.every((r) => render(r.Properties.GroupId) !== `\${${sg}.GroupId}`));
  });

  it('scales 1-10 tasks by target tracking on its backlog per task (test/scaling.test.ts has the details)', () => {
    const target = scalableTargetOf('queue-consumer');
    assert.deepEqual([target.props.MinCapacity, target.props.MaxCapacity], [1, 10]);
    const policies = Object.values(template.findResources('AWS::ApplicationAutoScaling::ScalingPolicy'))
      .map((p) => p.Properties)
      .filter((p) => p.ScalingTargetId.Ref === target.id);
    // With the minimum at 1 there is no scale-from-zero step policy.
    assert.deepEqual(policies.map((p) => p.PolicyType), ['TargetTrackingScaling']);
  });
});

describe('the queues', () => {
  it('hide a received message for 60 s and move it to the dead-letter queue after 3 receives', () => {
    assert.equal(resources()[queueId].Properties.VisibilityTimeout, 60);
    assert.deepEqual(resources()[queueId].Properties.RedrivePolicy, {
      deadLetterTargetArn: { 'Fn::GetAtt': [dlqId, 'Arn'] },
      maxReceiveCount: 3,
    });
  });

  it('are both encrypted by SQS and refuse plain HTTP; the dead-letter queue keeps messages 14 days', () => {
    for (const id of [queueId, dlqId]) {
      assert.equal(resources()[id].Properties.SqsManagedSseEnabled, true);
      template.hasResourceProperties('AWS::SQS::QueuePolicy', { Queues: [{ Ref: id }] });
    }
    assert.equal(resources()[dlqId].Properties.MessageRetentionPeriod, 14 * 24 * 3600);
  });
});

describe('both task definitions', () => {
  it('run on ARM64 (Graviton) Linux Fargate with 0.25 vCPU and 512 MiB', () => {
    for (const name of ['websocket', 'queue-consumer']) {
      const { props } = taskDefinitionOf(template, name);
      assert.deepEqual(props.RuntimePlatform, { CpuArchitecture: 'ARM64', OperatingSystemFamily: 'LINUX' });
      assert.deepEqual(props.RequiresCompatibilities, ['FARGATE']);
      assert.equal(props.Cpu, '256');
      assert.equal(props.Memory, '512');
    }
  });

  it('use images built from the repository\'s Dockerfile, one stage each, for linux/arm64', () => {
    const assets = JSON.parse(fs.readFileSync(path.join(outdir, 'TaskProtectionStack.assets.json'), 'utf8'));
    const images = Object.values(assets.dockerImages).map((i: any) => i.source); // eslint-disable-line @typescript-eslint/no-explicit-any
    assert.deepEqual(images.map((s) => s.dockerBuildTarget).sort(), ['queue-consumer', 'websocket']);
    for (const source of images) {
      assert.equal(source.platform, 'linux/arm64');
      assert.equal(source.dockerFile, 'Dockerfile');
      const staged = fs.readdirSync(path.join(outdir, source.directory)).sort();
      // The build context holds what the Dockerfile copies, and not target/, .git/ or deploy/.
      assert.deepEqual(staged, ['.dockerignore', 'Cargo.lock', 'Cargo.toml', 'Dockerfile', 'crates', 'src', 'static', 'tools']);
    }
  });

  it('log to their own log group, kept one week and deleted with the stack', () => {
    const groups = Object.values(template.findResources('AWS::Logs::LogGroup'));
    assert.deepEqual(groups.map((g) => g.Properties.LogGroupName).sort(), ['/ecs/task-protection/queue-consumer', '/ecs/task-protection/websocket']);
    for (const group of groups) {
      assert.equal(group.Properties.RetentionInDays, 7);
      assert.equal(group.DeletionPolicy, 'Delete');
    }
    for (const name of ['websocket', 'queue-consumer']) {
      assert.equal(containerOf(template, name).LogConfiguration.LogDriver, 'awslogs');
    }
  });
});

describe('the network', () => {
  it('is a new VPC over 2 AZs with public subnets only and no NAT gateway; tasks get public IPs', () => {
    template.resourceCountIs('AWS::EC2::VPC', 1);
    template.resourceCountIs('AWS::EC2::Subnet', 2);
    template.resourceCountIs('AWS::EC2::NatGateway', 0);
    for (const service of Object.values(template.findResources('AWS::ECS::Service'))) {
      assert.equal(service.Properties.NetworkConfiguration.AwsvpcConfiguration.AssignPublicIp, 'ENABLED');
    }
  });

  it('names the cluster task-protection', () => {
    template.hasResourceProperties('AWS::ECS::Cluster', { ClusterName: 'task-protection' });
  });

  it('needs no AWS account, region or lookup to synthesize', () => {
    assert.ok(Token.isUnresolved(stack.account) && Token.isUnresolved(stack.region));
    const manifest = JSON.parse(fs.readFileSync(path.join(outdir, 'manifest.json'), 'utf8'));
    assert.equal(manifest.missing, undefined);
    assert.equal(manifest.artifacts.TaskProtectionStack.environment, 'aws://unknown-account/unknown-region');
  });
});
