import { CfnOutput, Stack } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as elasticache from 'aws-cdk-lib/aws-elasticache';
import { Construct } from 'constructs';
import { AppConfig, chatBackplaneName } from './config';
import { WebSocketService } from './websocket-service';

/** The port ElastiCache Serverless (Valkey) listens on. */
export const BACKPLANE_PORT = 6379;

export interface ChatBackplaneProps {
  readonly config: AppConfig;
  readonly vpc: ec2.IVpc;
  /** Subnets no one reaches from the internet: isolated (the app's VPC) or private (an existing one). */
  readonly subnets: ec2.SubnetSelection;
  /** The websocket service: its tasks are the cache's only clients and get CHAT_BACKPLANE_URL. */
  readonly websocket: WebSocketService;
}

/**
 * The optional chat backplane (-c chatBackplane=true): an ElastiCache Serverless cache, Valkey
 * engine, that every websocket task publishes its clients' chat to and subscribes to (README
 * "Chat across tasks"). The CDK counterpart of copilot/websocket/addons/chat-backplane.yml.
 *
 * No IAM: the server connects with TLS and no credentials (ElastiCache Serverless accepts TLS
 * connections only, hence rediss://). What guards the cache is the network: it sits in subnets
 * with no route to or from the internet, and its security group admits TCP 6379 from the
 * websocket tasks' security group and nothing else.
 */
export class ChatBackplane extends Construct {
  readonly cache: elasticache.CfnServerlessCache;
  readonly securityGroup: ec2.SecurityGroup;
  /** `rediss://<endpoint address>:<endpoint port>`, a token until CloudFormation resolves it. */
  readonly url: string;

  constructor(scope: Construct, id: string, props: ChatBackplaneProps) {
    super(scope, id);
    const { config, vpc, websocket } = props;
    const cacheName = chatBackplaneName(config.clusterName);

    this.securityGroup = new ec2.SecurityGroup(this, 'SecurityGroup', {
      vpc,
      description: `Chat backplane of ${config.clusterName}: Valkey (${BACKPLANE_PORT}) from the ${config.websocket.serviceName} tasks only`,
      // The cache answers; it never opens connections of its own. (CDK writes a rule that
      // matches no traffic, since a group with no egress rule would allow all.)
      allowAllOutbound: false,
    });
    // One rule each way: ingress on the cache's group from the tasks' group, and, because the
    // tasks' group allows only HTTPS out, egress on the tasks' group to the cache's group.
    this.securityGroup.addIngressRule(
      websocket.taskSecurityGroup,
      ec2.Port.tcp(BACKPLANE_PORT),
      `Valkey from the ${config.websocket.serviceName} tasks`,
    );
    websocket.taskSecurityGroup.addEgressRule(
      this.securityGroup,
      ec2.Port.tcp(BACKPLANE_PORT),
      'Valkey to the chat backplane',
    );

    this.cache = new elasticache.CfnServerlessCache(this, 'Cache', {
      serverlessCacheName: cacheName,
      description: `Chat across the ${config.websocket.serviceName} tasks of the ${config.clusterName} cluster`,
      engine: 'valkey',
      majorEngineVersion: '8', // as the Copilot addon; ElastiCache added Valkey 8.0, Serverless included, in 2024
      subnetIds: vpc.selectSubnets(props.subnets).subnetIds,
      securityGroupIds: [this.securityGroup.securityGroupId],
      // A ceiling on what a runaway client could cost, not a size: chat lines and the hash of
      // connection counts are a few kilobytes, so 1 GB and 5,000 ECPUs a
      // second (about 5 MB/s of pub/sub traffic) are far above what the demo needs, while the
      // idle cost stays the 100 MB minimum (docs/DEPLOY.md section 11).
      cacheUsageLimits: {
        dataStorage: { maximum: 1, unit: 'GB' },
        ecpuPerSecond: { maximum: 5000 },
      },
      // No snapshots: chat is at most once and the connection counts expire within 30 s.
    });

    this.url = `rediss://${this.cache.attrEndpointAddress}:${this.cache.attrEndpointPort}`;
    websocket.container.addEnvironment('CHAT_BACKPLANE_URL', this.url);

    const stack = Stack.of(this);
    new CfnOutput(stack, 'ChatBackplaneName', {
      description: 'The chat backplane cache (aws elasticache describe-serverless-caches --serverless-cache-name ...)',
      value: this.cache.ref,
    });
  }
}
