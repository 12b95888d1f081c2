import { CfnOutput, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwactions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { AppConfig } from './config';
import { acceptFinding } from './nag';
import { grantTaskProtectionAndDrainWatch } from './task-role';
import { imageFromDockerfile, runtimePlatform } from './image';
import { alarmName, EMF_INTERVAL_SECS, EMF_NAMESPACE, emfMetric, protectionRejectionsAlarm } from './metrics';

/** Jobs each task runs at once (WORKER_CONCURRENCY). */
export const WORKER_CONCURRENCY = 1;

/**
 * The target of the worker's scaling: messages (waiting or being worked on) per task. A task
 * works through WORKER_CONCURRENCY jobs every `jobSecs`, so a backlog of B per task is done in
 * B * jobSecs / WORKER_CONCURRENCY seconds; keeping that at the acceptable latency gives
 * acceptableLatencySecs * WORKER_CONCURRENCY / jobSecs, the formula of Copilot's
 * `count.queue_delay` (acceptable_latency / msg_processing_time). Below 1 (jobs longer than the
 * acceptable latency) it asks for more than one task per message, which the maximum then caps.
 */
export function backlogPerTaskTarget(config: AppConfig): number {
  return (config.queueConsumer.acceptableLatencySecs * WORKER_CONCURRENCY) / config.queueConsumer.jobSecs;
}

/** The EMF metric whose one-minute SampleCount is the number of worker tasks running (see below). */
export const TASK_COUNT_METRIC = 'JobsInHand';

export interface QueueConsumerServiceProps {
  readonly config: AppConfig;
  readonly vpc: ec2.IVpc;
  readonly cluster: ecs.ICluster;
  readonly taskSubnets: ec2.SubnetSelection;
  readonly assignPublicIp: boolean;
}

/**
 * The `queue-consumer` SQS worker on Fargate (no load balancer), its queue and dead-letter queue,
 * scaled on queue depth.
 */
export class QueueConsumerService extends Construct {
  readonly service: ecs.FargateService;
  readonly queue: sqs.Queue;
  readonly deadLetterQueue: sqs.Queue;
  readonly taskRole: iam.Role;
  readonly logGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: QueueConsumerServiceProps) {
    super(scope, id);
    const { config, vpc, cluster } = props;
    const { serviceName } = config.queueConsumer;
    const stack = Stack.of(this);

    // --- Queues ------------------------------------------------------------------------------------
    // SQS-managed server-side encryption (SSE-SQS): encrypted at rest with no KMS key to pay for
    // and no kms:* permissions for producers or the worker. enforceSSL denies plain-HTTP access
    // in the queue policy.
    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      retentionPeriod: Duration.days(14), // the SQS maximum: two weeks to look at a failed job
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.queue = new sqs.Queue(this, 'Queue', {
      // How long a received message stays hidden; the worker extends it while the job runs
      // (ChangeMessageVisibility), so a crashed worker's job is back within a minute.
      // Must equal VISIBILITY_TIMEOUT_SECS below.
      visibilityTimeout: Duration.seconds(60),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // A message received queueMaxReceiveCount times (3 by default) without being deleted (a
      // body that is not a job, a job that keeps failing) goes to the dead-letter queue instead
      // of looping forever. The worker reads it at start-up and logs it.
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: config.queueConsumer.maxReceiveCount },
      removalPolicy: RemovalPolicy.DESTROY,
    });

    // --- IAM: the role the worker runs as --------------------------------------------------------
    this.taskRole = new iam.Role(this, 'TaskRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: `Task role of the ${serviceName} service: its own task protection and service, its service's tasks, its queue`,
    });
    // Protection while a job is in hand (through the ECS agent endpoint, which calls ECS with
    // this role), and, from issue 17 on, the drain watcher's calls: the worker drains on a
    // scale-in or a deployment as the websocket server does (lib/task-role.ts).
    grantTaskProtectionAndDrainWatch(this.taskRole, config, serviceName);
    // The worker's four SQS calls, on this queue only. GetQueueAttributes is its check at
    // start-up (issue 18): a queue that does not exist or that the role may not read stops the
    // worker with exit code 2 (and the deployment's circuit breaker rolls back) instead of a
    // task that looks healthy while every receive fails; it also reads the redrive policy.
    // DeleteMessageBatch and ChangeMessageVisibilityBatch have no IAM actions of their own: the
    // single-message actions authorize them. Written out rather than
    // queue.grantConsumeMessages(), which also grants sqs:GetQueueUrl that the worker does not
    // call.
    this.taskRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'ConsumeOwnQueue',
        actions: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes'],
        resources: [this.queue.queueArn],
      }),
    );

    // --- Task definition ------------------------------------------------------------------------
    this.logGroup = new logs.LogGroup(this, 'Logs', {
      logGroupName: `/ecs/${config.clusterName}/${serviceName}`,
      retention: logs.RetentionDays.ONE_WEEK,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    const taskDefinition = new ecs.FargateTaskDefinition(this, 'TaskDefinition', {
      family: `${config.clusterName}-${serviceName}`,
      cpu: 256, // 0.25 vCPU
      memoryLimitMiB: 512,
      runtimePlatform: runtimePlatform(config),
      taskRole: this.taskRole,
    });

    taskDefinition.addContainer('queue-consumer', {
      containerName: 'queue-consumer',
      image: imageFromDockerfile(config, 'queue-consumer'),
      environment: {
        QUEUE_URL: this.queue.queueUrl,
        LOG_FORMAT: 'json',
        VISIBILITY_TIMEOUT_SECS: '60', // the queue's visibility timeout above
        WORKER_CONCURRENCY: String(WORKER_CONCURRENCY), // jobs at once per task
        // On SIGTERM running jobs get this long, then go back to the queue; below stopTimeout.
        SHUTDOWN_TIMEOUT_SECS: '100',
        // The scaling below counts the tasks from these lines: keep them on, once a minute.
        METRICS_EMF: 'on',
        METRICS_INTERVAL_SECS: String(EMF_INTERVAL_SECS),
        METRICS_SERVICE_NAME: serviceName,
      },
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: serviceName }),
      // The image has no shell: the binary asks its own worker (/healthz on loopback). Unhealthy
      // once the worker has stopped taking jobs, its receives have failed for a minute
      // (UNHEALTHY_AFTER_SECS) or its receive loop has stalled; ECS replaces it. (A queue that
      // does not exist or cannot be read stops the worker at start-up already, with exit 2.)
      healthCheck: {
        command: ['CMD', '/usr/local/bin/queue-consumer', 'health'],
        interval: Duration.seconds(10),
        retries: 3,
        timeout: Duration.seconds(5),
        startPeriod: Duration.seconds(10),
      },
      // SIGTERM to SIGKILL: 120 s is the most Fargate allows. SHUTDOWN_TIMEOUT_SECS (100 s) for
      // running jobs, the rest for handing messages back and releasing protection.
      stopTimeout: Duration.seconds(120),
      essential: true,
    });

    const taskSecurityGroup = new ec2.SecurityGroup(this, 'TaskSecurityGroup', {
      vpc,
      description: `Tasks of the ${serviceName} service: no inbound traffic`,
      allowAllOutbound: false,
    });
    // Outbound HTTPS only (SQS, ECR, CloudWatch Logs, ECS); nothing may connect in.
    taskSecurityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to AWS APIs and ECR');

    this.service = new ecs.FargateService(this, 'Service', {
      cluster,
      serviceName,
      taskDefinition,
      // No desiredCount: auto scaling owns the count, and a DesiredCount in the template would
      // reset a scaled-out fleet on every update (see the websocket service).
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      // Explicit, for the reasons given on the websocket service: tasks spread over both AZs; a
      // rebalance starts the new task first and never stops a protected (busy) worker.
      availabilityZoneRebalancing: ecs.AvailabilityZoneRebalancing.ENABLED,
      vpcSubnets: props.taskSubnets,
      assignPublicIp: props.assignPublicIp,
      securityGroups: [taskSecurityGroup],
    });

    // --- Scaling on the backlog per task ------------------------------------------------------------
    // Target tracking on (messages waiting + messages being worked on) / running worker tasks, the
    // pattern AWS recommends for a queue worker (Application Auto Scaling User Guide, "Example:
    // Amazon SQS queue backlog per task"), through metric math. In-flight messages count: a task
    // busy with a long job is load, and a policy that saw only visible messages would remove
    // tasks while every worker is busy and add none for a few long jobs. CDK's L2 target tracking
    // takes a single metric, not metric math, so the policy is the L1 CfnScalingPolicy.
    //
    // The running task count comes from the worker's own EMF lines, not from Container Insights
    // (billed per metric; off in this app): every task writes one line a minute
    // (METRICS_INTERVAL_SECS = 60) in which every metric has one sample, so the one-minute
    // SampleCount of any of them is the number of tasks that reported that minute. JobsInHand is
    // the one used: a gauge the worker writes in every line from its first minute, under the
    // dimensions ClusterName and ServiceName (crates/app-support/src/metrics.rs, crates/queue-consumer/src/worker/mod.rs). A line that lands
    // just across a minute boundary makes one minute read a task more or less; target tracking
    // acts only on several minutes in a row (3 above the target to scale out, 15 below it to
    // scale in), so one such minute changes nothing.
    const scaling = this.service.autoScaleTaskCount({
      minCapacity: config.queueConsumer.minTasks,
      maxCapacity: config.queueConsumer.maxTasks,
    });
    const scalableTarget = scaling.node.findChild('Target') as appscaling.ScalableTarget;
    const queueName = this.queue.queueName;
    const sqsQuery = (id: string, metricName: string): appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty => ({
      id,
      metricStat: {
        metric: { namespace: 'AWS/SQS', metricName, dimensions: [{ name: 'QueueName', value: queueName }] },
        stat: 'Average', // SQS publishes each queue metric once a minute: a level, not a count of events
      },
      returnData: false,
    });
    const target = backlogPerTaskTarget(config);
    new appscaling.CfnScalingPolicy(this, 'BacklogPerTask', {
      policyName: `${config.clusterName}-${serviceName}-backlog-per-task`,
      policyType: 'TargetTrackingScaling',
      scalingTargetId: scalableTarget.scalableTargetId,
      targetTrackingScalingPolicyConfiguration: {
        targetValue: target,
        customizedMetricSpecification: {
          metrics: [
            sqsQuery('visible', 'ApproximateNumberOfMessagesVisible'),
            sqsQuery('inflight', 'ApproximateNumberOfMessagesNotVisible'),
            {
              id: 'tasks',
              metricStat: {
                metric: {
                  namespace: EMF_NAMESPACE,
                  metricName: TASK_COUNT_METRIC,
                  dimensions: [
                    { name: 'ClusterName', value: config.clusterName },
                    { name: 'ServiceName', value: serviceName },
                  ],
                },
                stat: 'SampleCount',
              },
              returnData: false,
            },
            {
              // With no task reporting, metric math counts the missing value as 0 and drops the
              // division by zero: no data, and target tracking does nothing on no data (neither
              // out nor in). The scale-from-zero alarm below covers that case.
              id: 'backlog_per_task',
              expression: '(visible + inflight) / tasks',
              label: 'Messages waiting or in flight per running worker task',
              returnData: true,
            },
          ],
        },
        // Out fast: a backlog is waiting. In slowly: scale-in only stops idle workers anyway (a
        // busy one holds scale-in protection), but there is no point in churning tasks.
        scaleOutCooldown: 60,
        scaleInCooldown: 120,
      },
    });

    // Scaling from zero (queueConsumerMinTasks=0): with no task running, nothing writes the EMF
    // lines, the target tracking above has no data and a backlog would wait forever. This alarm
    // fires when messages are waiting or in flight and no task reported, for 2 minutes in a row
    // (one minute without a line can be a boundary effect), and adds 1 task; target tracking takes
    // over once that task reports. `tasks < one` compares two time series: where the task count
    // has no value and `one` has, metric math counts the missing value as 0, so the comparison is
    // 1 exactly when no task reported. The 5-minute cooldown covers the new task's start and its
    // first line (a minute after it starts), so the alarm does not add a second task meanwhile.
    if (config.queueConsumer.minTasks === 0) {
      const visible = this.queue.metricApproximateNumberOfMessagesVisible({ period: Duration.seconds(60), statistic: 'Average' });
      const inflight = this.queue.metricApproximateNumberOfMessagesNotVisible({ period: Duration.seconds(60), statistic: 'Average' });
      const tasks = emfMetric(config, serviceName, TASK_COUNT_METRIC, cloudwatch.Stats.SAMPLE_COUNT);
      const fromZero = new appscaling.StepScalingAction(this, 'ScaleFromZero', {
        scalingTarget: scalableTarget,
        adjustmentType: appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
        cooldown: Duration.minutes(5),
        metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
      });
      fromZero.addAdjustment({ adjustment: 1, lowerBound: 0 });
      const noWorker = new cloudwatch.Alarm(this, 'BacklogWithoutWorkerAlarm', {
        alarmName: alarmName(config, serviceName, 'backlog-without-worker'),
        alarmDescription: `Messages wait in the ${serviceName} queue and no ${serviceName} task runs: start one (scaling from zero).`,
        metric: new cloudwatch.MathExpression({
          expression: '((visible + inflight) >= 1) AND (tasks < (visible * 0 + 1))',
          usingMetrics: { visible, inflight, tasks },
          label: '1 while messages wait and no worker task reports',
          period: Duration.seconds(60),
        }),
        threshold: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 2,
        datapointsToAlarm: 2,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      noWorker.addAlarmAction(new cwactions.ApplicationScalingAction(fromZero));
    }

    // --- Alarm that rolls a bad deployment back ----------------------------------------------------
    const rejections = protectionRejectionsAlarm(this, config, serviceName);
    this.service.enableDeploymentAlarms([alarmName(config, serviceName, 'protection-rejections')], {
      behavior: ecs.AlarmBehavior.ROLLBACK_ON_ALARM,
    });
    this.service.node.addDependency(rejections); // created first (by name: see lib/metrics.ts)

    new CfnOutput(stack, 'QueueUrl', {
      description: 'Send jobs here: aws sqs send-message --queue-url <this> --message-body 5000',
      value: this.queue.queueUrl,
    });
    new CfnOutput(stack, 'DeadLetterQueueUrl', { value: this.deadLetterQueue.queueUrl });
    new CfnOutput(stack, 'QueueConsumerServiceName', { value: serviceName });
    new CfnOutput(stack, 'QueueConsumerLogGroup', { value: this.logGroup.logGroupName });

    // --- cdk-nag: findings accepted on purpose -----------------------------------------------------
    acceptFinding(taskDefinition, 'AwsSolutions-ECS2',
      'The environment holds settings and the queue URL only; no secret is passed.');
  }
}
