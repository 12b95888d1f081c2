import * as fs from 'fs';
import * as path from 'path';
import { Node } from 'constructs';

/** Where the Fargate tasks run: see TaskProtectionStack for the cost trade-off. */
export type TaskSubnets = 'public' | 'private';

/** CPU architecture of the tasks and of the image CDK builds for them. */
export type Architecture = 'ARM64' | 'X86_64';

/** Everything the app can be told through context (`-c key=value` or cdk.json "context"). */
export interface AppConfig {
  /** ECS cluster name; also the ClusterName dimension of the Connections metric and part of the IAM ARNs. */
  readonly clusterName: string;
  /** An existing VPC to use instead of creating one (needs a concrete account and region: a lookup). */
  readonly vpcId?: string;
  /** `public` (default): public subnets, tasks get public IPs, no NAT gateway. `private`: one NAT gateway. */
  readonly taskSubnets: TaskSubnets;
  /** ACM certificate for an HTTPS listener on 443 (HTTP 80 then redirects to it). */
  readonly certificateArn?: string;
  readonly architecture: Architecture;
  /**
   * `true`: an ElastiCache Serverless (Valkey) cache the websocket tasks share their chat through
   * (CHAT_BACKPLANE_URL; README "Chat across tasks"). `false` (default): chat stays per task.
   */
  readonly chatBackplane: boolean;
  readonly websocket: {
    readonly serviceName: string;
    readonly minTasks: number;
    readonly maxTasks: number;
    /** Target tracking keeps the average Connections per task near this. */
    readonly connectionsPerTask: number;
  };
  readonly queueConsumer: {
    readonly serviceName: string;
    /** 0 is allowed: a separate policy starts the first task when messages wait and no task runs. */
    readonly minTasks: number;
    readonly maxTasks: number;
    /** How long a message may wait in the queue before a worker takes it (Copilot's `acceptable_latency`). */
    readonly acceptableLatencySecs: number;
    /** How long one job takes (Copilot's `msg_processing_time` times the worker concurrency). */
    readonly jobSecs: number;
    /**
     * After how many receives without a delete the queue's redrive policy moves a message to the
     * dead-letter queue (SQS allows 1 to 1000).
     */
    readonly maxReceiveCount: number;
  };
  /** The repository root: the Docker build context holding the Dockerfile. */
  readonly repoRoot: string;
}

/** Every context key the app reads, with its default (documented in docs/DEPLOY.md). */
export const CONTEXT_KEYS = [
  'clusterName',
  'vpcId',
  'taskSubnets',
  'certificateArn',
  'architecture',
  'chatBackplane',
  'websocketServiceName',
  'websocketMinTasks',
  'websocketMaxTasks',
  'connectionsPerTask',
  'queueConsumerServiceName',
  'queueConsumerMinTasks',
  'queueConsumerMaxTasks',
  'queueAcceptableLatencySecs',
  'queueJobSecs',
  'queueMaxReceiveCount',
] as const;

function str(node: Node, key: string): string | undefined {
  const value: unknown = node.tryGetContext(key);
  if (value === undefined || value === null || value === '') return undefined;
  return String(value);
}

function int(node: Node, key: string, fallback: number, min: number, max: number): number {
  const raw = str(node, key);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`context ${key}=${raw}: expected a whole number from ${min} to ${max}`);
  }
  return value;
}

/** A positive number (fractions allowed, e.g. 0.5 s), from min to max. */
function positive(node: Node, key: string, fallback: number, min: number, max: number): number {
  const raw = str(node, key);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new Error(`context ${key}=${raw}: expected a number of seconds from ${min} to ${max}`);
  }
  return value;
}

function oneOf<T extends string>(node: Node, key: string, allowed: readonly T[], fallback: T): T {
  const raw = str(node, key);
  if (raw === undefined) return fallback;
  const match = allowed.find((a) => a.toLowerCase() === raw.toLowerCase());
  if (!match) throw new Error(`context ${key}=${raw}: expected one of ${allowed.join(', ')}`);
  return match;
}

function bool(node: Node, key: string, fallback: boolean): boolean {
  const raw = str(node, key);
  if (raw === undefined) return fallback;
  if (/^true$/i.test(raw)) return true;
  if (/^false$/i.test(raw)) return false;
  throw new Error(`context ${key}=${raw}: expected true or false`);
}

/**
 * The chat backplane cache's name: `<clusterName>-chat`, lower case, `_` as `-`. ElastiCache
 * names start with a letter and hold letters, digits and single hyphens (no trailing one); 40
 * characters at most is kept here as a conservative limit.
 */
export function chatBackplaneName(clusterName: string): string {
  return `${clusterName.toLowerCase().replace(/_/g, '-')}-chat`;
}

function checkChatBackplaneName(clusterName: string): void {
  const cacheName = chatBackplaneName(clusterName);
  if (!/^[a-z][a-z0-9-]*$/.test(cacheName) || cacheName.includes('--') || cacheName.length > 40) {
    throw new Error(
      `context clusterName=${clusterName} with chatBackplane=true: the cache would be named ${cacheName}; ` +
        'it must start with a letter, have no "--" and be at most 40 characters',
    );
  }
}

// ECS cluster and service names: up to 255 letters, digits, hyphens and underscores.
function name(node: Node, key: string, fallback: string): string {
  const value = str(node, key) ?? fallback;
  if (!/^[A-Za-z0-9_-]{1,255}$/.test(value)) {
    throw new Error(`context ${key}=${value}: ECS names are 1-255 letters, digits, '-' or '_'`);
  }
  return value;
}

/** The repository root: the nearest directory above this file with both a Dockerfile and Cargo.toml. */
export function findRepoRoot(start: string = __dirname): string {
  let dir = path.resolve(start);
  for (;;) {
    if (fs.existsSync(path.join(dir, 'Dockerfile')) && fs.existsSync(path.join(dir, 'Cargo.toml'))) {
      return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no Dockerfile and Cargo.toml above ${start}`);
    dir = parent;
  }
}

/** Reads and checks the context; throws with the key's name on a bad value. */
export function readConfig(node: Node): AppConfig {
  if (str(node, 'websocketMinTasks') !== undefined && Number(str(node, 'websocketMinTasks')) === 0) {
    // Target tracking on Connections per task is all that scales the websocket service. With no
    // task running nothing publishes Connections, so a service at zero would stay there: players
    // would get 503 from the load balancer until someone raised the count by hand.
    throw new Error(
      'context websocketMinTasks=0: the websocket service cannot scale out from zero tasks ' +
        '(with no task running, nothing publishes the Connections metric its scaling tracks); use 1 or more',
    );
  }
  const websocketMin = int(node, 'websocketMinTasks', 1, 1, 1000);
  const queueMin = int(node, 'queueConsumerMinTasks', 1, 0, 1000);
  const config: AppConfig = {
    clusterName: name(node, 'clusterName', 'task-protection'),
    vpcId: str(node, 'vpcId'),
    taskSubnets: oneOf(node, 'taskSubnets', ['public', 'private'] as const, 'public'),
    certificateArn: str(node, 'certificateArn'),
    architecture: oneOf(node, 'architecture', ['ARM64', 'X86_64'] as const, 'ARM64'),
    chatBackplane: bool(node, 'chatBackplane', false),
    websocket: {
      serviceName: name(node, 'websocketServiceName', 'websocket'),
      minTasks: websocketMin,
      maxTasks: int(node, 'websocketMaxTasks', 10, Math.max(1, websocketMin), 1000),
      connectionsPerTask: int(node, 'connectionsPerTask', 1000, 1, 1_000_000),
    },
    queueConsumer: {
      serviceName: name(node, 'queueConsumerServiceName', 'queue-consumer'),
      minTasks: queueMin,
      maxTasks: int(node, 'queueConsumerMaxTasks', 10, Math.max(1, queueMin), 1000),
      acceptableLatencySecs: positive(node, 'queueAcceptableLatencySecs', 60, 1, 86_400),
      jobSecs: positive(node, 'queueJobSecs', 2, 0.001, 43_200),
      maxReceiveCount: int(node, 'queueMaxReceiveCount', 3, 1, 1000),
    },
    repoRoot: findRepoRoot(),
  };
  if (config.websocket.serviceName === config.queueConsumer.serviceName) {
    throw new Error('websocketServiceName and queueConsumerServiceName must differ');
  }
  if (config.chatBackplane) checkChatBackplaneName(config.clusterName);
  return config;
}
