import { CfnOutput, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
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
      // A message received 3 times without being deleted (a body that is not a job, a job that
      // keeps failing) goes to the dead-letter queue instead of looping forever.
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: 3 },
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
    // The worker's three SQS calls, on this queue only. DeleteMessageBatch and
    // ChangeMessageVisibilityBatch have no IAM actions of their own: the single-message actions
    // authorize them. Written out rather than queue.grantConsumeMessages(), which also grants
    // sqs:GetQueueAttributes and sqs:GetQueueUrl that the worker does not call.
    this.taskRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'ConsumeOwnQueue',
        actions: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility'],
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
        WORKER_CONCURRENCY: '1', // jobs at once per task
        // On SIGTERM running jobs get this long, then go back to the queue; below stopTimeout.
        SHUTDOWN_TIMEOUT_SECS: '100',
        METRICS_EMF: 'on',
        METRICS_INTERVAL_SECS: '60',
        METRICS_SERVICE_NAME: serviceName,
      },
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: serviceName }),
      // The image has no shell: the binary asks its own worker (/healthz on loopback). Unhealthy
      // once the worker has stopped taking jobs or its receive loop has stalled; ECS replaces it.
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
      desiredCount: 1,
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      vpcSubnets: props.taskSubnets,
      assignPublicIp: props.assignPublicIp,
      securityGroups: [taskSecurityGroup],
    });

    // --- Scaling on queue depth ----------------------------------------------------------------------
    // Step scaling on ApproximateNumberOfMessagesVisible, not target tracking on backlog per
    // task: backlog per task is metric math (visible messages / running tasks), and CDK's L2
    // target tracking accepts only a single metric (a MathExpression has no metricStat to
    // render). ECS publishes no running-task count without Container Insights (billed per
    // metric), so the divisor would cost money or need a Lambda that publishes it (what
    // Copilot does). Step scaling on the raw depth needs neither.
    // Messages being worked on are in flight, not visible: busy tasks do not count as backlog,
    // and a task with a job in hand holds scale-in protection, so scale-in never stops it.
    const scaling = this.service.autoScaleTaskCount({
      minCapacity: config.queueConsumer.minTasks,
      maxCapacity: config.queueConsumer.maxTasks,
    });
    scaling.scaleOnMetric('QueueDepth', {
      metric: this.queue.metricApproximateNumberOfMessagesVisible({
        period: Duration.seconds(60), // SQS publishes queue metrics once a minute
        statistic: 'Maximum',
      }),
      adjustmentType: appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
      scalingSteps: [
        { upper: 0, change: -1 }, // nothing waiting: one task fewer (protected tasks stay)
        { lower: 10, change: +1 }, // a backlog: one more worker
        { lower: 100, change: +3 },
        { lower: 500, change: +5 },
      ],
      cooldown: Duration.seconds(60),
    });

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
