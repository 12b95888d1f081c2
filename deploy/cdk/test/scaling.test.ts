// Issue 20: who owns the task count, how the worker scales on its backlog (and from zero), and the
// alarms that roll a bad deployment back. Asserted on the synthesized template.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Template } from 'aws-cdk-lib/assertions';
import { environmentOf, logicalIdOf, render, synth } from './helpers';

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

const { template } = synth();
const resources = (t: Template = template): Record<string, Json> => t.toJSON().Resources;
const serviceOf = (t: Template, name: string) =>
  resources(t)[logicalIdOf(t, 'AWS::ECS::Service', (p) => p.ServiceName === name)].Properties;
const queueIdOf = (t: Template) => logicalIdOf(t, 'AWS::SQS::Queue', (p) => p.RedrivePolicy !== undefined);

/** The scaling policies on the scalable target of the ECS service with this name. */
function policiesOf(t: Template, serviceName: string): Json[] {
  const serviceId = logicalIdOf(t, 'AWS::ECS::Service', (p) => p.ServiceName === serviceName);
  const targetId = logicalIdOf(t, 'AWS::ApplicationAutoScaling::ScalableTarget', (p) =>
    render(p.ResourceId).endsWith(`/\${${serviceId}.Name}`),
  );
  return Object.values(t.findResources('AWS::ApplicationAutoScaling::ScalingPolicy'))
    .map((p) => p.Properties)
    .filter((p) => p.ScalingTargetId.Ref === targetId);
}

const alarmNamed = (t: Template, name: string) =>
  Object.entries(t.findResources('AWS::CloudWatch::Alarm')).find(([, a]) => a.Properties.AlarmName === name);

describe('the task count', () => {
  // Every context that changes the services: none of them may bring DesiredCount back, or the
  // next update (any image change) would reset a scaled-out fleet to it.
  const contexts: Record<string, string>[] = [
    {},
    { websocketMinTasks: '3', websocketMaxTasks: '6', queueConsumerMinTasks: '2', queueConsumerMaxTasks: '4' },
    { queueConsumerMinTasks: '0' },
    { taskSubnets: 'private', certificateArn: 'arn:aws:acm:us-east-1:123456789012:certificate/x' },
    { chatBackplane: 'true', architecture: 'X86_64' },
  ];
  for (const context of contexts) {
    it(`is owned by auto scaling: no service carries DesiredCount (context ${JSON.stringify(context)})`, () => {
      const t = synth(context).template;
      const services = Object.values(t.findResources('AWS::ECS::Service'));
      assert.equal(services.length, 2);
      for (const service of services) {
        assert.equal(service.Properties.DesiredCount, undefined, service.Properties.ServiceName);
      }
      // ... and each has a scalable target, whose minimum is what an update falls back to.
      assert.equal(Object.keys(t.findResources('AWS::ApplicationAutoScaling::ScalableTarget')).length, 2);
    });
  }

  it('is rebalanced across Availability Zones on both services, explicitly, with room for the extra task', () => {
    for (const name of ['websocket', 'queue-consumer']) {
      const service = serviceOf(template, name);
      assert.equal(service.AvailabilityZoneRebalancing, 'ENABLED', name);
      // Rebalancing starts a task before stopping one: ECS requires maximumPercent above 100.
      assert.ok(service.DeploymentConfiguration.MaximumPercent > 100, name);
    }
  });
});

describe('the queue consumer\'s scaling', () => {
  const policy = () => {
    const tracking = policiesOf(template, 'queue-consumer').filter((p) => p.PolicyType === 'TargetTrackingScaling');
    assert.equal(tracking.length, 1);
    return tracking[0].TargetTrackingScalingPolicyConfiguration;
  };

  it('tracks (visible + in-flight messages) / running tasks with metric math, target 60 s / 2 s = 30 per task', () => {
    const config = policy();
    const queueId = queueIdOf(template);
    const queue = [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queueId, 'QueueName'] } }];
    assert.deepEqual(config.CustomizedMetricSpecification.Metrics, [
      {
        Id: 'visible',
        MetricStat: { Metric: { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible', Dimensions: queue }, Stat: 'Average' },
        ReturnData: false,
      },
      {
        Id: 'inflight',
        MetricStat: { Metric: { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesNotVisible', Dimensions: queue }, Stat: 'Average' },
        ReturnData: false,
      },
      {
        Id: 'tasks',
        MetricStat: {
          Metric: {
            Namespace: 'ECSTaskProtection',
            MetricName: 'JobsInHand',
            Dimensions: [
              { Name: 'ClusterName', Value: 'task-protection' },
              { Name: 'ServiceName', Value: 'queue-consumer' },
            ],
          },
          Stat: 'SampleCount',
        },
        ReturnData: false,
      },
      {
        Id: 'backlog_per_task',
        Expression: '(visible + inflight) / tasks',
        Label: 'Messages waiting or in flight per running worker task',
        ReturnData: true,
      },
    ]);
    assert.equal(config.TargetValue, 30);
    assert.deepEqual([config.ScaleOutCooldown, config.ScaleInCooldown], [60, 120]);
    // No step policy on visible messages alone is left over.
    assert.deepEqual(policiesOf(template, 'queue-consumer').map((p) => p.PolicyType), ['TargetTrackingScaling']);
  });

  it('counts the tasks from what the worker writes: one EMF line a minute under its cluster and service names', () => {
    const env = environmentOf(template, 'queue-consumer');
    // SampleCount per minute is the number of tasks only with one line per task per minute.
    assert.equal(env.METRICS_EMF, 'on');
    assert.equal(env.METRICS_INTERVAL_SECS, '60');
    const tasks = policy().CustomizedMetricSpecification.Metrics.find((m: Json) => m.Id === 'tasks').MetricStat.Metric;
    const dims = Object.fromEntries(tasks.Dimensions.map((d: Json) => [d.Name, d.Value]));
    assert.equal(dims.ServiceName, env.METRICS_SERVICE_NAME);
    assert.equal(dims.ClusterName, Object.values(template.findResources('AWS::ECS::Cluster'))[0].Properties.ClusterName);
  });

  it('takes its target from the acceptable latency and the job time: 600 s / 3600 s = 1/6 message per task', () => {
    const t = synth({ queueAcceptableLatencySecs: '600', queueJobSecs: '3600' }).template;
    const tracking = policiesOf(t, 'queue-consumer').find((p) => p.PolicyType === 'TargetTrackingScaling');
    assert.equal(tracking.TargetTrackingScalingPolicyConfiguration.TargetValue, 600 / 3600);
    // The worked example of issue 20: 9 hour-long jobs waiting on 1 task read 9 per task, 54 times
    // the target, so target tracking scales out (to the maximum, 10) instead of waiting for 10.
    assert.ok(9 / 1 > tracking.TargetTrackingScalingPolicyConfiguration.TargetValue);
  });

  it('with queueConsumerMinTasks=0, starts a task when messages wait and no task reports, for 2 minutes', () => {
    const t = synth({ queueConsumerMinTasks: '0' }).template;
    const queueId = queueIdOf(t);
    const step = policiesOf(t, 'queue-consumer').filter((p) => p.PolicyType === 'StepScaling');
    assert.equal(step.length, 1);
    assert.deepEqual(step[0].StepScalingPolicyConfiguration, {
      AdjustmentType: 'ChangeInCapacity',
      Cooldown: 300,
      MetricAggregationType: 'Maximum',
      StepAdjustments: [{ MetricIntervalLowerBound: 0, ScalingAdjustment: 1 }],
    });
    const [stepId] = Object.entries(t.findResources('AWS::ApplicationAutoScaling::ScalingPolicy')).find(
      ([, p]) => p.Properties.PolicyType === 'StepScaling',
    )!;
    const [, alarm] = alarmNamed(t, 'task-protection-queue-consumer-backlog-without-worker')!;
    const a = alarm.Properties;
    assert.deepEqual(a.AlarmActions, [{ Ref: stepId }]);
    assert.deepEqual(
      [a.ComparisonOperator, a.Threshold, a.EvaluationPeriods, a.DatapointsToAlarm, a.TreatMissingData],
      ['GreaterThanOrEqualToThreshold', 1, 2, 2, 'notBreaching'],
    );
    const byId = Object.fromEntries(a.Metrics.map((m: Json) => [m.Id, m]));
    assert.equal(a.Metrics.filter((m: Json) => m.ReturnData !== false).length, 1);
    assert.equal(
      a.Metrics.find((m: Json) => m.ReturnData !== false).Expression,
      '((visible + inflight) >= 1) AND (tasks < (visible * 0 + 1))',
    );
    assert.deepEqual(
      ['visible', 'inflight'].map((id) => [byId[id].MetricStat.Metric.MetricName, byId[id].MetricStat.Metric.Dimensions]),
      [
        ['ApproximateNumberOfMessagesVisible', [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queueId, 'QueueName'] } }]],
        ['ApproximateNumberOfMessagesNotVisible', [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queueId, 'QueueName'] } }]],
      ],
    );
    assert.deepEqual([byId.tasks.MetricStat.Metric.MetricName, byId.tasks.MetricStat.Stat], ['JobsInHand', 'SampleCount']);
    // The scalable target lets it go to zero, and target tracking stays as with a minimum of 1.
    const target = Object.values(t.findResources('AWS::ApplicationAutoScaling::ScalableTarget'))
      .map((r) => r.Properties)
      .find((p) => p.MinCapacity === 0);
    assert.ok(target);
    assert.equal(policiesOf(t, 'queue-consumer').filter((p) => p.PolicyType === 'TargetTrackingScaling').length, 1);
  });

  it('has no scale-from-zero policy or alarm while the minimum is 1 or more', () => {
    assert.equal(alarmNamed(template, 'task-protection-queue-consumer-backlog-without-worker'), undefined);
  });
});

describe('deployment alarms', () => {
  const names = { websocket: 'task-protection-websocket', 'queue-consumer': 'task-protection-queue-consumer' };

  it('roll back a deployment: each service watches its own alarms (ROLLBACK_ON_ALARM)', () => {
    const refs = (name: string) => {
      const alarms = serviceOf(template, name).DeploymentConfiguration.Alarms;
      assert.deepEqual([alarms.Enable, alarms.Rollback], [true, true], name);
      // Literal names (a Ref would make the service depend on its alarms), each of an alarm here,
      // which CloudFormation creates before the service.
      const dependsOn = resources()[logicalIdOf(template, 'AWS::ECS::Service', (p) => p.ServiceName === name)].DependsOn;
      for (const alarm of alarms.AlarmNames) {
        const found = alarmNamed(template, alarm);
        assert.ok(found, alarm);
        assert.ok(dependsOn.includes(found[0]), `${name} depends on ${alarm}`);
      }
      return [...alarms.AlarmNames].sort();
    };
    assert.deepEqual(refs('websocket'), [`${names.websocket}-protection-rejections`, `${names.websocket}-target-5xx`]);
    assert.deepEqual(refs('queue-consumer'), [`${names['queue-consumer']}-protection-rejections`]);
    // The circuit breaker stays on, for tasks that never get healthy.
    for (const name of Object.keys(names)) {
      assert.deepEqual(serviceOf(template, name).DeploymentConfiguration.DeploymentCircuitBreaker, { Enable: true, Rollback: true });
    }
  });

  it('ProtectionRejections: a task rejected 5 times a minute (Maximum over tasks) in 2 of 3 minutes', () => {
    for (const [service, prefix] of Object.entries(names)) {
      const [, alarm] = alarmNamed(template, `${prefix}-protection-rejections`)!;
      const a = alarm.Properties;
      assert.deepEqual(
        [a.Namespace, a.MetricName, a.Statistic, a.Period, a.Threshold, a.ComparisonOperator, a.EvaluationPeriods, a.DatapointsToAlarm, a.TreatMissingData],
        ['ECSTaskProtection', 'ProtectionRejections', 'Maximum', 60, 5, 'GreaterThanOrEqualToThreshold', 3, 2, 'notBreaching'],
      );
      assert.deepEqual(a.Dimensions, [
        { Name: 'ClusterName', Value: 'task-protection' },
        { Name: 'ServiceName', Value: environmentOf(template, service).METRICS_SERVICE_NAME },
      ]);
    }
  });

  it('target 5xx: 75 % or more of the target group\'s requests (at least 10 a minute) for 5 minutes in a row', () => {
    const [, alarm] = alarmNamed(template, `${names.websocket}-target-5xx`)!;
    const a = alarm.Properties;
    assert.deepEqual(
      [a.Threshold, a.ComparisonOperator, a.EvaluationPeriods, a.DatapointsToAlarm, a.TreatMissingData],
      [75, 'GreaterThanOrEqualToThreshold', 5, 5, 'notBreaching'],
    );
    const expression = a.Metrics.find((m: Json) => m.ReturnData !== false);
    assert.equal(expression.Expression, 'IF(requests >= 10, 100 * errors / requests, 0)');
    const tg = logicalIdOf(template, 'AWS::ElasticLoadBalancingV2::TargetGroup', () => true);
    // CDK names the load balancer dimension through the listener that uses the target group
    // ("app/<name>/<id>", taken from the listener's ARN).
    const listener = logicalIdOf(template, 'AWS::ElasticLoadBalancingV2::Listener', () => true);
    for (const [id, metricName] of [['requests', 'RequestCount'], ['errors', 'HTTPCode_Target_5XX_Count']]) {
      const stat = a.Metrics.find((m: Json) => m.Id === id).MetricStat;
      assert.deepEqual([stat.Metric.Namespace, stat.Metric.MetricName, stat.Stat, stat.Period], ['AWS/ApplicationELB', metricName, 'Sum', 60]);
      const dims = Object.fromEntries(stat.Metric.Dimensions.map((d: Json) => [d.Name, d.Value]));
      assert.deepEqual(Object.keys(dims).sort(), ['LoadBalancer', 'TargetGroup']);
      assert.equal(render(dims.TargetGroup), `\${${tg}.TargetGroupFullName}`);
      assert.match(JSON.stringify(dims.LoadBalancer), new RegExp(`"Ref":"${listener}"`));
    }
  });
});

describe('the websocket server behind the ALB', () => {
  it('keeps idle HTTP connections open longer than the ALB does (HTTP_IDLE_TIMEOUT_SECS 75 > idle timeout 60)', () => {
    const lb = Object.values(template.findResources('AWS::ElasticLoadBalancingV2::LoadBalancer'))[0].Properties;
    const albIdle = Number(lb.LoadBalancerAttributes.find((a: Json) => a.Key === 'idle_timeout.timeout_seconds').Value);
    const serverIdle = Number(environmentOf(template, 'websocket').HTTP_IDLE_TIMEOUT_SECS);
    assert.equal(albIdle, 60);
    assert.equal(serverIdle, 75);
    assert.ok(serverIdle > albIdle);
  });
});
