"""Puts into moto the few records Copilot looks up before it renders a workload offline.

Usage: seed.py APP ENV [ENV ...]   (talks to whatever endpoint boto3 is pointed at; the caller
routes it through moto's proxy with HTTPS_PROXY and AWS_CA_BUNDLE).

What Copilot reads, and what we fake:
  * SSM parameters /copilot/applications/APP and .../environments/ENV: the application and
    environment records that `copilot app init` / `copilot env init` would write.
  * a CloudFormation stack named APP-ENV: the environment stack. Copilot checks its template
    version (Metadata.Version) and which optional features it exposes as parameters.
  * a stack set named APP-infrastructure with one instance: the application's regional
    resources, whose outputs (KMS key, artifact bucket) Copilot reads.
Account 123456789012 is moto's documentation account, not a real one.
"""
import json
import sys

import boto3

ACCOUNT = "123456789012"
REGION = "us-east-1"
ENV_TEMPLATE_VERSION = "v1.34.0"
# Environment-stack parameters Copilot looks for to decide which features the env supports.
ENV_FEATURES = (
    "ALBWorkloads",
    "InternalALBWorkloads",
    "EFSWorkloads",
    "NATWorkloads",
    "Aliases",
    "AppRunnerPrivateWorkloads",
)
PLACEHOLDER = {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}


def seed(app, envs):
    ssm = boto3.client("ssm", region_name=REGION)
    cfn = boto3.client("cloudformation", region_name=REGION)

    ssm.put_parameter(
        Name=f"/copilot/applications/{app}",
        Type="String",
        Value=json.dumps({"name": app, "account": ACCOUNT}),
    )
    for env in envs:
        ssm.put_parameter(
            Name=f"/copilot/applications/{app}/environments/{env}",
            Type="String",
            Value=json.dumps({
                "app": app,
                "name": env,
                "region": REGION,
                "accountID": ACCOUNT,
                "managerRoleARN": f"arn:aws:iam::{ACCOUNT}:role/{app}-{env}-EnvManagerRole",
            }),
        )
        template = {
            "Metadata": {"Version": ENV_TEMPLATE_VERSION},
            "Parameters": {name: {"Type": "String", "Default": ""} for name in ENV_FEATURES},
            "Resources": PLACEHOLDER,
        }
        cfn.create_stack(
            StackName=f"{app}-{env}",
            TemplateBody=json.dumps(template),
            Parameters=[{"ParameterKey": name, "ParameterValue": ""} for name in ENV_FEATURES],
        )

    infra = {
        "Resources": PLACEHOLDER,
        "Outputs": {
            "KMSKeyARN": {"Value": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/placeholder"},
            "PipelineBucket": {"Value": "placeholder-bucket"},
        },
    }
    cfn.create_stack_set(StackSetName=f"{app}-infrastructure", TemplateBody=json.dumps(infra))
    cfn.create_stack_instances(
        StackSetName=f"{app}-infrastructure", Accounts=[ACCOUNT], Regions=[REGION]
    )


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: seed.py APP ENV [ENV ...]")
    seed(sys.argv[1], sys.argv[2:])
