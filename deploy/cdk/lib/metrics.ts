import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import { Construct } from 'constructs';
import { AppConfig } from './config';

/**
 * The binaries' own metrics (src/metrics.rs): one CloudWatch Embedded Metric Format line per task
 * every METRICS_INTERVAL_SECS on stdout, which the awslogs driver ships to CloudWatch Logs and
 * CloudWatch turns into metrics in this namespace, with the dimensions ClusterName (the cluster's
 * short name) and ServiceName (METRICS_SERVICE_NAME). Both binaries write the protection
 * manager's Protected, Draining, ProtectionCalls and ProtectionRejections; the server adds
 * Connections, HttpConnections, ChatMessages, ChatDropped (and BackplaneConnected,
 * BackplaneDropped with a chat backplane); the worker JobsInHand, MessagesReceived,
 * MessagesRedelivered, JobsDone, JobsFailed, JobsRetried, JobsTimedOut, JobsInvalid, JobsReturned,
 * ReceiveErrors, DeleteErrors, JobDuration and MessageAge (messages, not receives: README "Health
 * and status"). Gauges are the value when the line is written, counters what they added since
 * the line before, durations their mean over the interval in seconds.
 */
export const EMF_NAMESPACE = 'ECSTaskProtection';

/**
 * METRICS_INTERVAL_SECS of both services. It must stay 60: one line per task per minute is what
 * makes a one-minute SampleCount the number of tasks (the worker's scaling divides by it) and a
 * one-minute Sum or Maximum of a counter what one minute added.
 */
export const EMF_INTERVAL_SECS = 60;

/** One of the binaries' EMF metrics for one service of this app, over one minute. */
export function emfMetric(config: AppConfig, serviceName: string, metricName: string, statistic: string): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: EMF_NAMESPACE,
    metricName,
    dimensionsMap: { ClusterName: config.clusterName, ServiceName: serviceName },
    statistic,
    period: Duration.seconds(EMF_INTERVAL_SECS),
  });
}

/**
 * The name of one of this app's alarms on a service: `<cluster>-<service>-<what>`. Deployment
 * alarms name alarms by these literal strings, not by the alarm's Ref: a Ref would make the
 * service depend on its alarms, and an alarm on one of the service's own metrics (or on its
 * target group) depend on the service, a circular dependency CloudFormation refuses.
 */
export function alarmName(config: AppConfig, serviceName: string, what: string): string {
  return `${config.clusterName}-${serviceName}-${what}`;
}

/**
 * ProtectionRejections per task per minute at which a task is failing to protect itself for a
 * reason other than DEPLOYMENT_BLOCKED. The protection manager retries a failed call after 1, 2, 4,
 * 8, then 15 s, each times a random 0.5-1 (crates/ecs-task-protection/src/protection/policy.rs): at least 4 tries a minute,
 * 5.3 on average, and 5 or more in about 19 minutes of 20. DEPLOYMENT_BLOCKED, which is expected
 * while a deployment replaces protected tasks (more protected tasks than the desired count), is
 * retried every 30 s times 0.5-1.5, at least 15 s apart: at most 4 a minute, 2 on average.
 */
export const REJECTIONS_PER_TASK_MINUTE = 5;

/**
 * An alarm that one of the service's tasks keeps failing to set or release its protection (access
 * denied after a task role change, TASK_NOT_VALID, an ECS outage): the highest per-task count of
 * ProtectionRejections in a minute (Maximum over the tasks' lines) reaches
 * REJECTIONS_PER_TASK_MINUTE in 2 of 3 minutes. It is one of the service's deployment alarms, so
 * a deployment that breaks protection rolls back; DEPLOYMENT_BLOCKED alone never reaches it.
 */
export function protectionRejectionsAlarm(scope: Construct, config: AppConfig, serviceName: string): cloudwatch.Alarm {
  return new cloudwatch.Alarm(scope, 'ProtectionRejectionsAlarm', {
    alarmName: alarmName(config, serviceName, 'protection-rejections'),
    alarmDescription:
      `A ${serviceName} task keeps failing to set or release its scale-in protection ` +
      `(${REJECTIONS_PER_TASK_MINUTE} or more rejections a minute; DEPLOYMENT_BLOCKED alone stays below). ` +
      'The log says why (access denied, TASK_NOT_VALID, ...). Rolls back a deployment in progress.',
    metric: emfMetric(config, serviceName, 'ProtectionRejections', cloudwatch.Stats.MAXIMUM),
    threshold: REJECTIONS_PER_TASK_MINUTE,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    evaluationPeriods: 3,
    datapointsToAlarm: 2,
    // No line means no task, or no rejection counted: nothing to alarm on.
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
  });
}
