import { CfnOutput, Duration, FeatureFlags, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as cxapi from 'aws-cdk-lib/cx-api';
import { Construct } from 'constructs';
import { AppConfig } from './config';
import { acceptFinding } from './nag';
import { grantTaskProtectionAndDrainWatch } from './task-role';
import { imageFromDockerfile, runtimePlatform } from './image';
import { alarmName, EMF_INTERVAL_SECS, EMF_NAMESPACE, protectionRejectionsAlarm } from './metrics';

/** The namespace and name under which the servers publish their connection count (EMF). */
export const CONNECTIONS_METRIC = { namespace: EMF_NAMESPACE, metricName: 'Connections' } as const;

/**
 * The ALB's idle timeout: an open WebSocket with no traffic for this long is closed (ALB range
 * 1-4000 s, default 60 s). The server pings every client every 25 s (WS_PING_INTERVAL_SECS), so a
 * connected player is never idle that long.
 */
export const ALB_IDLE_TIMEOUT_SECS = 60;

/**
 * The server's HTTP keep-alive idle timeout (HTTP_IDLE_TIMEOUT_SECS): how long it keeps an idle
 * HTTP connection from the ALB open. It must be longer than the ALB's idle timeout, so that the
 * ALB, not the server, closes an idle connection: a server that closes first can race a request
 * the ALB is sending on it, and the player gets a 502. 75 s is the server's default.
 */
export const HTTP_IDLE_TIMEOUT_SECS = ALB_IDLE_TIMEOUT_SECS + 15;

/**
 * The target group's 5xx alarm: the share of requests the tasks answered with a 5xx, in percent,
 * at or above which a minute counts as bad, and only when the tasks got at least
 * MIN_REQUESTS_PER_MINUTE requests that minute (1 failure out of 1 request says nothing).
 */
export const TARGET_5XX_PERCENT = 75;
export const MIN_REQUESTS_PER_MINUTE = 10;
/** Consecutive bad minutes before the 5xx alarm fires (see its construction for why 5). */
export const TARGET_5XX_MINUTES = 5;

export interface WebSocketServiceProps {
  readonly config: AppConfig;
  readonly vpc: ec2.IVpc;
  readonly cluster: ecs.ICluster;
  readonly taskSubnets: ec2.SubnetSelection;
  readonly assignPublicIp: boolean;
}

/**
 * The `websocket` server on Fargate behind a public Application Load Balancer, scaled on the
 * number of WebSocket connections per task.
 */
export class WebSocketService extends Construct {
  readonly service: ecs.FargateService;
  readonly loadBalancer: elbv2.ApplicationLoadBalancer;
  readonly targetGroup: elbv2.ApplicationTargetGroup;
  readonly taskRole: iam.Role;
  readonly logGroup: logs.LogGroup;
  /** The server's container: the chat backplane (lib/chat-backplane.ts) adds its URL here. */
  readonly container: ecs.ContainerDefinition;
  /** The tasks' security group: the chat backplane admits this group, and only this group. */
  readonly taskSecurityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: WebSocketServiceProps) {
    super(scope, id);
    const { config, vpc, cluster } = props;
    const { serviceName } = config.websocket;
    const stack = Stack.of(this);

    // --- IAM: the role the server's code runs as -------------------------------------------------
    // Exactly the ECS calls the server makes (README "Backends"; lib/task-role.ts says which call
    // needs which statement), nothing else. The EMF metrics go to stdout and reach CloudWatch
    // through the awslogs driver, which uses the execution role: no cloudwatch:PutMetricData here.
    this.taskRole = new iam.Role(this, 'TaskRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: `Task role of the ${serviceName} service: its own task protection and service, its service's tasks`,
    });
    grantTaskProtectionAndDrainWatch(this.taskRole, config, serviceName);

    // --- Task definition ------------------------------------------------------------------------
    this.logGroup = new logs.LogGroup(this, 'Logs', {
      logGroupName: `/ecs/${config.clusterName}/${serviceName}`,
      retention: logs.RetentionDays.ONE_WEEK, // a demo: a week of logs is enough and keeps storage cheap
      removalPolicy: RemovalPolicy.DESTROY, // `cdk destroy` leaves nothing behind
    });

    const taskDefinition = new ecs.FargateTaskDefinition(this, 'TaskDefinition', {
      family: `${config.clusterName}-${serviceName}`,
      cpu: 256, // 0.25 vCPU: the server idles at a few MiB; see BENCHMARKS.md for per-connection cost
      memoryLimitMiB: 512,
      runtimePlatform: runtimePlatform(config),
      taskRole: this.taskRole,
    });

    this.container = taskDefinition.addContainer('websocket', {
      containerName: 'websocket',
      image: imageFromDockerfile(config, 'websocket'),
      portMappings: [{ containerPort: 3000, protocol: ecs.Protocol.TCP }],
      environment: {
        PORT: '3000', // must match the port mapping and the target group
        LOG_FORMAT: 'json', // one JSON object per line, for CloudWatch Logs Insights
        PROTECTION_BACKEND: 'auto', // the ECS agent endpoint ($ECS_AGENT_URI), which Fargate sets
        PROTECTION_DURATION_MINUTES: '30', // one grant; ECS drops it after this at worst
        SHUTDOWN_TIMEOUT_SECS: '10', // well inside the 30 s stopTimeout below
        DRAIN_WATCH_INTERVAL_SECS: '30', // how often the drain watcher calls DescribeServices
        // Embedded Metric Format: every METRICS_INTERVAL_SECS the server writes one JSON log line
        // that CloudWatch Logs turns into the Connections metric the scaling policy tracks.
        METRICS_EMF: 'on',
        METRICS_INTERVAL_SECS: String(EMF_INTERVAL_SECS),
        METRICS_SERVICE_NAME: serviceName, // the ServiceName dimension; must equal the policy's
        // Above the ALB's idle timeout (below), so that the ALB closes idle connections first.
        HTTP_IDLE_TIMEOUT_SECS: String(HTTP_IDLE_TIMEOUT_SECS),
      },
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: serviceName }),
      // SIGTERM to SIGKILL. ECS's default is 30 s (Fargate allows up to 120 s); the server closes
      // its clients, releases protection and exits within SHUTDOWN_TIMEOUT_SECS (10 s).
      stopTimeout: Duration.seconds(30),
      essential: true,
    });

    // --- Security groups -------------------------------------------------------------------------
    const albSecurityGroup = new ec2.SecurityGroup(this, 'LoadBalancerSecurityGroup', {
      vpc,
      description: `Public ALB of the ${serviceName} service`,
      allowAllOutbound: false, // CDK adds the one egress rule it needs: to the tasks on 3000
    });
    albSecurityGroup.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(80), 'HTTP from anywhere');
    if (config.certificateArn) {
      albSecurityGroup.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS from anywhere');
    }

    const taskSecurityGroup = (this.taskSecurityGroup = new ec2.SecurityGroup(this, 'TaskSecurityGroup', {
      vpc,
      description: `Tasks of the ${serviceName} service: only the ALB may connect`,
      allowAllOutbound: false,
    }));
    // Outbound: HTTPS only (ECR and S3 for the image, CloudWatch Logs, the ECS API). The ECS
    // agent endpoint and the task metadata endpoint are link-local and DNS goes to the VPC
    // resolver; security groups do not filter either.
    taskSecurityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to AWS APIs and ECR');
    // Inbound: only from the load balancer, on the container port (added by connections below).
    // With -c chatBackplane=true, lib/chat-backplane.ts adds one more outbound rule: TCP 6379 to
    // the cache's security group.

    // --- Service -----------------------------------------------------------------------------
    this.service = new ecs.FargateService(this, 'Service', {
      cluster,
      serviceName, // fixed, so the IAM ARN above and the metric dimension are exact
      taskDefinition,
      // No desiredCount: auto scaling (below) owns the count. A template that carries DesiredCount
      // sets it on every update that touches the service (every image change does), which would
      // put a scaled-out fleet back to that number. Without it, ECS starts a new service with 1
      // task (then the scaling minimum applies) and an update keeps the current count.
      // Rolling deployments start the new task before stopping an old one. A task that holds
      // protection is not stopped until it releases it; the server drains (refuses new players,
      // releases when the last one leaves) so a deployment is never held forever.
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      // Availability Zone rebalancing, set explicitly: ECS defaults it to ENABLED when it creates a
      // service but, on an update that does not say, keeps what the service had (DISABLED for a
      // service created before mid 2025). Enabled, ECS keeps the tasks spread over both AZs, so
      // one AZ's failure never takes every player's server. To rebalance it starts a task in the
      // lighter AZ first and stops one in the heavier AZ after (hence maxHealthyPercent above
      // 100), and it never stops a protected task. For a while running = desired + 1: the drain
      // watcher's fleet rule drains nobody then, since the extra task is the new, unprotected one,
      // and a task with players is never the one rebalancing stops.
      availabilityZoneRebalancing: ecs.AvailabilityZoneRebalancing.ENABLED,
      healthCheckGracePeriod: Duration.seconds(30), // the binary starts in well under a second
      vpcSubnets: props.taskSubnets,
      assignPublicIp: props.assignPublicIp,
      securityGroups: [taskSecurityGroup],
    });

    // --- Load balancer -------------------------------------------------------------------------
    this.loadBalancer = new elbv2.ApplicationLoadBalancer(this, 'LoadBalancer', {
      vpc,
      internetFacing: true,
      vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC },
      securityGroup: albSecurityGroup,
      idleTimeout: Duration.seconds(ALB_IDLE_TIMEOUT_SECS), // see ALB_IDLE_TIMEOUT_SECS
      dropInvalidHeaderFields: true,
    });

    this.targetGroup = new elbv2.ApplicationTargetGroup(this, 'TargetGroup', {
      vpc,
      port: 3000,
      protocol: elbv2.ApplicationProtocol.HTTP,
      targetType: elbv2.TargetType.IP, // Fargate tasks register by IP (awsvpc)
      healthCheck: {
        // 200 while serving (draining included), 503 once the server is shutting down.
        path: '/healthz',
        healthyHttpCodes: '200',
        healthyThresholdCount: 2, // ALB allows 2-10
        unhealthyThresholdCount: 2, // ALB allows 2-10
        interval: Duration.seconds(10), // ALB allows 5-300 s
        timeout: Duration.seconds(5), // ALB allows 2-120 s, and less than the interval
      },
      // How long the ALB keeps a deregistering task's open connections before cutting them;
      // ECS sends SIGTERM after that. Open WebSockets do not end by themselves, so a task that
      // still has players waits the full delay; one with no connection is released at once.
      // 300 s (the ELB default; range 0-3600 s) gives players on a task ECS must stop anyway
      // (a Fargate retirement, a failed health check) five minutes to finish a round.
      deregistrationDelay: Duration.seconds(300),
      // No stickiness: a WebSocket is one long TCP connection; a reconnect may go anywhere.
    });
    this.targetGroup.addTarget(
      this.service.loadBalancerTarget({ containerName: 'websocket', containerPort: 3000 }),
    );

    if (config.certificateArn) {
      // With a certificate, HTTPS on 443 serves the page (which then uses wss://) and HTTP on
      // 80 only redirects there, so no player is left on an unencrypted connection.
      this.loadBalancer.addListener('Https', {
        port: 443,
        protocol: elbv2.ApplicationProtocol.HTTPS,
        certificates: [elbv2.ListenerCertificate.fromArn(config.certificateArn)],
        sslPolicy: tlsPolicy(this),
        defaultTargetGroups: [this.targetGroup],
        open: false, // ingress is the security group's rules above
      });
      this.loadBalancer.addListener('Http', {
        port: 80,
        open: false,
        defaultAction: elbv2.ListenerAction.redirect({ protocol: 'HTTPS', port: '443', permanent: true }),
      });
    } else {
      this.loadBalancer.addListener('Http', {
        port: 80,
        protocol: elbv2.ApplicationProtocol.HTTP,
        defaultTargetGroups: [this.targetGroup],
        open: false,
      });
    }

    // --- Scaling on connections per task ---------------------------------------------------------
    // Each task publishes, through EMF, its current connection count as ECSTaskProtection /
    // Connections (unit Count) with the dimensions ClusterName and ServiceName, once a minute.
    // All tasks of the service share those dimensions, so the Average over a minute is the
    // mean number of connections per task: the "utilization" target tracking needs (it goes
    // down when tasks are added). The dimensions here must equal what the server publishes,
    // or the policy sees no data.
    const connections = new cloudwatch.Metric({
      namespace: CONNECTIONS_METRIC.namespace,
      metricName: CONNECTIONS_METRIC.metricName,
      dimensionsMap: { ClusterName: config.clusterName, ServiceName: serviceName },
      statistic: cloudwatch.Stats.AVERAGE,
      unit: cloudwatch.Unit.COUNT,
      // Used by graphs and alarms made from this object. The target tracking policy has no
      // period field; Application Auto Scaling creates its own alarms on one-minute data.
      period: Duration.seconds(EMF_INTERVAL_SECS),
    });
    // At least 1 task (lib/config.ts refuses websocketMinTasks=0): with none running, nothing
    // publishes Connections and this policy could never scale out again.
    const scaling = this.service.autoScaleTaskCount({
      minCapacity: config.websocket.minTasks,
      maxCapacity: config.websocket.maxTasks,
    });
    // Scale-in only ever lowers the desired count: ECS then stops tasks that are not
    // protected. A task with players holds scale-in protection, so it is never the one picked.
    scaling.scaleToTrackCustomMetric('ConnectionsPerTask', {
      metric: connections,
      targetValue: config.websocket.connectionsPerTask,
      // Slow in: players leave in waves, and an idle task may still hold protection for its
      // hold-over (3 min by default), during which a scale-in could not stop anything anyway.
      scaleInCooldown: Duration.seconds(300),
      scaleOutCooldown: Duration.seconds(60), // fast out: new players should find room
    });

    // --- Alarms that roll a bad deployment back --------------------------------------------------
    // ECS watches these while a deployment runs (and for its bake time) and rolls back to the
    // previous task definition if either goes to ALARM. The circuit breaker above covers tasks
    // that never get healthy; these cover tasks that pass their health check and still fail.
    const rejections = protectionRejectionsAlarm(this, config, serviceName);
    // The share of requests the tasks answer with a 5xx. Not every 5xx is a fault: a draining
    // task (a deployment or a scale-in is replacing it) answers new WebSocket upgrades with 503
    // so that the page reconnects to another task. During a good deployment that is at most
    // about half of the upgrade attempts once the new tasks are registered (the ALB spreads
    // them over old and new tasks alike), but close to all of them for the minute or two in
    // which the old tasks already drain and no new task has passed its health checks yet. A
    // deployment whose new tasks answer with 5xx keeps the share near 100 % for as long as it
    // runs. Hence TARGET_5XX_PERCENT over TARGET_5XX_MINUTES minutes in a row, and only minutes
    // with at least MIN_REQUESTS_PER_MINUTE requests (a lone 503 is not a fault).
    const requests = this.targetGroup.metrics.requestCount({ period: Duration.seconds(60), statistic: cloudwatch.Stats.SUM });
    const errors = this.targetGroup.metrics.httpCodeTarget(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, {
      period: Duration.seconds(60),
      statistic: cloudwatch.Stats.SUM,
    });
    const target5xx = new cloudwatch.Alarm(this, 'Target5xxAlarm', {
      alarmName: alarmName(config, serviceName, 'target-5xx'),
      alarmDescription:
        `The ${serviceName} tasks answer ${TARGET_5XX_PERCENT} % or more of their requests with a 5xx ` +
        `for ${TARGET_5XX_MINUTES} minutes in a row (minutes with ${MIN_REQUESTS_PER_MINUTE} requests or more). ` +
        'Rolls back a deployment in progress.',
      // A minute without a 5xx has no HTTPCode_Target_5XX_Count data point: metric math counts
      // the missing value as 0. A minute without requests gives no data point at all.
      metric: new cloudwatch.MathExpression({
        expression: `IF(requests >= ${MIN_REQUESTS_PER_MINUTE}, 100 * errors / requests, 0)`,
        usingMetrics: { requests, errors },
        label: 'Target 5xx, % of requests',
        period: Duration.seconds(60),
      }),
      threshold: TARGET_5XX_PERCENT,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: TARGET_5XX_MINUTES,
      datapointsToAlarm: TARGET_5XX_MINUTES,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    this.service.enableDeploymentAlarms(
      [alarmName(config, serviceName, 'protection-rejections'), alarmName(config, serviceName, 'target-5xx')],
      { behavior: ecs.AlarmBehavior.ROLLBACK_ON_ALARM },
    );
    // By name, but created first: no alarm here depends on the service, so this is no cycle.
    this.service.node.addDependency(rejections, target5xx);

    // --- Outputs -----------------------------------------------------------------------------------
    // With a certificate the page is served over HTTPS only (port 80 redirects), and its socket is
    // wss://. The certificate names your domain, not the ALB: point the domain at this DNS name
    // (CNAME or alias record) and open it by that name, or the browser rejects the certificate.
    const [http, ws] = config.certificateArn ? ['https', 'wss'] : ['http', 'ws'];
    new CfnOutput(stack, 'WebSocketUrl', {
      description: config.certificateArn
        ? 'The page of the websocket service, over HTTPS: open it by your domain (the certificate\'s name), pointed at this host'
        : 'The page of the websocket service (the socket is /ws on the same host)',
      value: `${http}://${this.loadBalancer.loadBalancerDnsName}/`,
    });
    new CfnOutput(stack, 'WebSocketSocketUrl', {
      description: 'The WebSocket itself, for clients other than the page',
      value: `${ws}://${this.loadBalancer.loadBalancerDnsName}/ws`,
    });
    new CfnOutput(stack, 'WebSocketServiceName', { value: serviceName });
    new CfnOutput(stack, 'WebSocketLogGroup', { value: this.logGroup.logGroupName });

    // --- cdk-nag: findings accepted on purpose -----------------------------------------------------
    acceptFinding(this.loadBalancer, 'AwsSolutions-ELB2',
      'Access logs need an S3 bucket and cost money; the server logs every connection itself.');
    acceptFinding(albSecurityGroup, 'AwsSolutions-EC23',
      'A public game/chat server: players connect from any IPv4 address, on 80 (and 443) only.');
    acceptFinding(taskDefinition, 'AwsSolutions-ECS2',
      'The environment holds settings only (ports, intervals, names); no secret is passed.');
  }
}

/**
 * The HTTPS listener's TLS policy. With cdk.json's @aws-cdk/aws-elasticloadbalancingv2:usePostQuantumTlsPolicy
 * (as this app sets it), ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09: TLS 1.3 and 1.2 with hybrid
 * post-quantum key exchange (ML-KEM) for clients that offer it, the policy the Elastic Load
 * Balancing guide recommends. Without the flag, ELBSecurityPolicy-TLS13-1-2-2021-06. (Naming a
 * policy at all matters: CloudFormation's default is ELBSecurityPolicy-2016-08, TLS 1.0 included.)
 */
export function tlsPolicy(scope: Construct): elbv2.SslPolicy {
  return FeatureFlags.of(scope).isEnabled(cxapi.ELB_USE_POST_QUANTUM_TLS_POLICY)
    ? elbv2.SslPolicy.TLS13_12_RES_PQ
    : elbv2.SslPolicy.RECOMMENDED_TLS;
}
