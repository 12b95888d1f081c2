import { ArnFormat, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import { AppConfig } from './config';
import { acceptFinding, TASK_ARN_FINDING } from './nag';

/**
 * The ECS part of a task role: what the protection manager and the drain watcher of either binary
 * (the websocket server and the queue consumer run the same ones) call, each statement scoped as
 * tightly as the Service Authorization Reference for Amazon ECS allows:
 *
 *   ecs:UpdateTaskProtection  resource type task*               condition keys include ecs:cluster
 *   ecs:GetTaskProtection     resource type task*               condition keys include ecs:cluster
 *   ecs:DescribeTasks         resource type task*               condition keys include ecs:cluster
 *   ecs:DescribeServices      resource type service*            condition keys include ecs:cluster
 *   ecs:ListTasks             resource type container-instance* condition keys include ecs:cluster
 *
 * A task ID is only known at run time, so the task statements allow `task/<cluster>/*`: the tasks
 * of this cluster and no other (IAM has no way to say "only the caller's own task", nor "only the
 * tasks of one service"). ListTasks names container instances, which Fargate tasks do not run on;
 * the Amazon ECS Developer Guide's own example ("List and describe task examples") allows it on
 * `*` with an `ArnEquals` condition on `ecs:cluster`, which is what this does.
 */
export function grantTaskProtectionAndDrainWatch(role: iam.Role, config: AppConfig, serviceName: string): void {
  const stack = Stack.of(role);
  const tasksOfCluster = stack.formatArn({
    service: 'ecs',
    resource: 'task',
    resourceName: `${config.clusterName}/*`,
    arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
  });
  // Scale-in protection: set when work starts (the first client, the first job of a busy period),
  // refreshed while it lasts, released when it ends and on SIGTERM. With PROTECTION_BACKEND=agent
  // the ECS agent makes this call with this role's credentials; with api the binary makes it.
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'ProtectOwnTask',
      actions: ['ecs:UpdateTaskProtection'],
      resources: [tasksOfCluster],
    }),
  );
  // Reading protection: the task's own state at start-up (a restarted process learns whether it
  // left its task protected), and, for the drain watcher's fleet rule, the protection of every
  // task of the service (GetTaskProtection, up to 10 tasks a call), to decide which protected
  // tasks drain when ECS scales in.
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'ReadTaskProtectionInThisCluster',
      actions: ['ecs:GetTaskProtection'],
      resources: [tasksOfCluster],
    }),
  );
  // Drain watcher: DescribeTasks on the task's own task once at start-up (group = service:NAME, the
  // service to watch when the task metadata has no ServiceName, as on Fargate; startedBy = the
  // deployment that started it), and on every RUNNING task of the service for the fleet rule
  // (startedAt and lastStatus of each, up to 100 a call).
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'DescribeTasksInThisCluster',
      actions: ['ecs:DescribeTasks'],
      resources: [tasksOfCluster],
    }),
  );
  // Drain watcher, fleet rule: ListTasks(cluster, serviceName, desiredStatus RUNNING) finds the
  // service's tasks. Only the cluster can be named (no ecs:service condition key for ListTasks).
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'ListTasksInThisCluster',
      actions: ['ecs:ListTasks'],
      resources: ['*'],
      conditions: {
        ArnEquals: {
          'ecs:cluster': stack.formatArn({
            service: 'ecs',
            resource: 'cluster',
            resourceName: config.clusterName,
            arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
          }),
        },
      },
    }),
  );
  // Drain watcher: DescribeServices on the task's own service every DRAIN_WATCH_INTERVAL_SECS (its
  // deployments, desired and running counts) to notice a deployment or a scale-in. The service
  // name is fixed by the app, so the ARN is exact.
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'DescribeOwnService',
      actions: ['ecs:DescribeServices'],
      resources: [
        stack.formatArn({
          service: 'ecs',
          resource: 'service',
          resourceName: `${config.clusterName}/${serviceName}`,
          arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
        }),
      ],
    }),
  );

  acceptFinding(role, `AwsSolutions-IAM5[${TASK_ARN_FINDING(config.clusterName)}]`,
    'A task protects and reads itself and its service\'s tasks by task ARN, whose IDs are only known at run time: task/<cluster>/* is the narrowest IAM allows.');
  acceptFinding(role, 'AwsSolutions-IAM5[Resource::*]',
    'ecs:ListTasks names container instances, which Fargate tasks have none of: it is allowed on * with an ArnEquals condition on ecs:cluster (this cluster only), as the ECS Developer Guide shows.');
}
