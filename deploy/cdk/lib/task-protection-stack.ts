import { CfnOutput, Stack, StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { Construct } from 'constructs';
import { ChatBackplane } from './chat-backplane';
import { AppConfig } from './config';
import { acceptFinding } from './nag';
import { QueueConsumerService } from './queue-consumer-service';
import { WebSocketService } from './websocket-service';

export interface TaskProtectionStackProps extends StackProps {
  readonly config: AppConfig;
}

/**
 * Both services of the repository on one ECS cluster: the `websocket` server behind a public
 * ALB and the `queue-consumer` SQS worker. One stack: they share the VPC and the cluster, and
 * `cdk deploy` / `cdk destroy` handle everything at once.
 */
export class TaskProtectionStack extends Stack {
  readonly vpc: ec2.IVpc;
  readonly cluster: ecs.Cluster;
  readonly websocket: WebSocketService;
  readonly queueConsumer: QueueConsumerService;
  /** The chat backplane, with -c chatBackplane=true. */
  readonly chatBackplane?: ChatBackplane;

  constructor(scope: Construct, id: string, props: TaskProtectionStackProps) {
    super(scope, id, props);
    const { config } = props;

    // --- Network ---------------------------------------------------------------------------------
    // Default (taskSubnets=public): public subnets only, tasks with public IPs, no NAT gateway.
    //   Cost: $0.005/h per public IPv4 address, i.e. about $3.65 a month per running task.
    //   One NAT gateway costs $0.045/h (about $33 a month) plus $0.045 per GB through it, plus
    //   its own public IPv4 address: the public-IP layout is cheaper up to about 10 tasks
    //   running all month, and this demo normally runs 2.
    //   Exposure: a public IP does not make a task reachable. The websocket tasks' security
    //   group admits only the ALB's security group, on port 3000; the queue consumer's admits
    //   nothing. Both allow outbound HTTPS only.
    // taskSubnets=private: tasks in private subnets behind one NAT gateway (one, not one per AZ:
    //   if its AZ fails, tasks in the other AZ lose outbound access until it is back; fine for a
    //   demo, use one per AZ in production), plus a free S3 gateway endpoint so image layers
    //   pulled from ECR (stored in S3) do not pass through the NAT gateway.
    // chatBackplane=true adds one isolated subnet per AZ (no route to or from the internet, no
    //   NAT) for the cache, after the other groups so their CIDR blocks stay where they were.
    //   With it off the VPC is exactly as before.
    const privateTasks = config.taskSubnets === 'private';
    const backplaneSubnets: ec2.SubnetConfiguration[] = config.chatBackplane
      ? [{ name: 'backplane', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 }]
      : [];
    if (config.vpcId) {
      // An existing VPC: needs a concrete account and region (bin/app.ts passes CDK_DEFAULT_*),
      // and `cdk synth` looks it up once and caches it in cdk.context.json.
      this.vpc = ec2.Vpc.fromLookup(this, 'Vpc', { vpcId: config.vpcId });
    } else {
      const vpc = new ec2.Vpc(this, 'Vpc', {
        maxAzs: 2, // the ALB needs two AZs; tasks spread over both
        natGateways: privateTasks ? 1 : 0,
        subnetConfiguration: [
          { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
          ...(privateTasks ? [{ name: 'tasks', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 24 }] : []),
          ...backplaneSubnets,
        ],
        // Would add a Lambda-backed custom resource; nothing here uses the default group.
        restrictDefaultSecurityGroup: false,
      });
      if (privateTasks) {
        vpc.addGatewayEndpoint('S3', { service: ec2.GatewayVpcEndpointAwsService.S3 });
      }
      acceptFinding(vpc, 'AwsSolutions-VPC7',
        'Flow logs cost ingestion per GB; the ALB and the services log what this demo needs.');
      this.vpc = vpc;
    }
    const taskSubnets: ec2.SubnetSelection = {
      subnetType: privateTasks ? ec2.SubnetType.PRIVATE_WITH_EGRESS : ec2.SubnetType.PUBLIC,
    };

    // --- Cluster ------------------------------------------------------------------------------------
    this.cluster = new ecs.Cluster(this, 'Cluster', {
      vpc: this.vpc,
      // Fixed name: the task ARNs in the IAM policies and the ClusterName dimension of the
      // Connections metric name it.
      clusterName: config.clusterName,
      // Container Insights is billed per metric and per GB of performance logs; the services'
      // own EMF metrics and logs are enough here.
      containerInsightsV2: ecs.ContainerInsights.DISABLED,
    });
    acceptFinding(this.cluster, 'AwsSolutions-ECS4',
      'Container Insights is billed per metric; the services publish their own metrics (EMF).');

    const common = { config, vpc: this.vpc, cluster: this.cluster, taskSubnets, assignPublicIp: !privateTasks };
    this.websocket = new WebSocketService(this, 'WebSocket', common);
    this.queueConsumer = new QueueConsumerService(this, 'QueueConsumer', common);

    if (config.chatBackplane) {
      this.chatBackplane = new ChatBackplane(this, 'ChatBackplane', {
        config,
        vpc: this.vpc,
        subnets: backplaneSubnetsOf(this.vpc, config.vpcId !== undefined),
        websocket: this.websocket,
      });
    }

    new CfnOutput(this, 'ClusterName', { value: config.clusterName });

    // The execution roles CDK makes (ECR pull, awslogs) include ecr:GetAuthorizationToken,
    // which IAM only grants on "*".
    for (const service of [this.websocket.service, this.queueConsumer.service]) {
      const executionRole = service.taskDefinition.executionRole;
      if (executionRole) {
        acceptFinding(executionRole, 'AwsSolutions-IAM5[Resource::*]',
          'CDK-generated execution role: ecr:GetAuthorizationToken accepts no resource but "*".');
      }
    }
  }
}

/**
 * Where the chat backplane goes: the app's own VPC has isolated subnets for it; an existing VPC
 * (vpcId) gets its isolated subnets if it has any, else its private ones (routed through a NAT
 * gateway: reachable from nowhere on the internet either, and the cache makes no outbound
 * connections).
 */
function backplaneSubnetsOf(vpc: ec2.IVpc, existing: boolean): ec2.SubnetSelection {
  if (vpc.isolatedSubnets.length > 0) return { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };
  if (existing && vpc.privateSubnets.length > 0) return { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS };
  throw new Error('chatBackplane=true needs private or isolated subnets in the VPC (vpcId) for the cache');
}
