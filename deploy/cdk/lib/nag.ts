import { Validations } from 'aws-cdk-lib';
import { IConstruct } from 'constructs';

/**
 * Accepts one cdk-nag finding on a construct and everything under it, with the reason.
 * (cdk-nag v3 reports through CDK's policy validation; `Validations.acknowledge` replaces v2's
 * NagSuppressions.) Findings with several occurrences are named `RuleId[FindingId]`, e.g.
 * `AwsSolutions-IAM5[Resource::*]`.
 */
export function acceptFinding(construct: IConstruct, id: string, reason: string): void {
  Validations.of(construct).acknowledge({ id, reason });
}

/** How cdk-nag names the IAM5 finding for `arn:...:task/<clusterName>/*` in a policy. */
export const TASK_ARN_FINDING = (clusterName: string): string =>
  `Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:<AWS::AccountId>:task/${clusterName}/*`;
