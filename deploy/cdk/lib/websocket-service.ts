import { CfnOutput, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { AppConfig } from './config';
import { acceptFinding } from './nag';
import { grantTaskProtectionAndDrainWatch } from './task-role';
import { imageFromDockerfile, runtimePlatform } from './image';

/** The namespace and name under which the servers publish their connection count (EMF). */
export const CONNECTIONS_METRIC = { namespace: 'ECSTaskProtection', metricName: 'Connections' } as const;

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
        METRICS_INTERVAL_SECS: '60',
        METRICS_SERVICE_NAME: serviceName, // the ServiceName dimension; must equal the policy's
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
      desiredCount: 1,
      // Rolling deployments start the new task before stopping an old one. A task that holds
      // protection is not stopped until it releases it; the server drains (refuses new players,
      // releases when the last one leaves) so a deployment is never held forever.
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
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
      // An open WebSocket with no traffic is closed after this long (ALB range 1-4000 s,
      // default 60 s). The server pings every client every 25 s (WS_PING_INTERVAL_SECS), so a
      // connected player is never idle for 60 s.
      idleTimeout: Duration.seconds(60),
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
        sslPolicy: elbv2.SslPolicy.RECOMMENDED_TLS,
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
      period: Duration.seconds(60),
    });
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

    new CfnOutput(stack, 'WebSocketUrl', {
      description: 'The page of the websocket service (the socket is /ws on the same host)',
      value: `http://${this.loadBalancer.loadBalancerDnsName}/`,
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
