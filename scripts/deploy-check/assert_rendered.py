"""Checks that what Copilot rendered says what the manifests mean. Copilot accepts unknown keys
without a word (a misspelled key silently falls back to a default), so the values that matter
are asserted on the rendered CloudFormation, not on the manifests.

Usage: assert_rendered.py OUT_DIR ENV SERVICE...   (exit 1 with one line per finding)
"""
import json
import sys

from cfnlint.decode import decode

out, env, services = sys.argv[1], sys.argv[2], sys.argv[3:]
findings = []


def load(path):
    template, matches = decode(path)
    if template is None:
        findings.append(f"{path}: cannot be read: {matches}")
        return {}
    return template


def resources_of(template, kind):
    return {name: r.get("Properties", {}) for name, r in template.get("Resources", {}).items()
            if r.get("Type") == kind}


def expect(what, actual, wanted):
    if actual != wanted:
        findings.append(f"{what}: rendered {actual!r}, expected {wanted!r}")


def container(template):
    defs = [p for p in resources_of(template, "AWS::ECS::TaskDefinition").values()]
    return defs[0]["ContainerDefinitions"][0] if defs else {}


def addon_statements(service):
    addons = load(f"{out}/{service}.addons.stack.yml")
    return [statement
            for policy in resources_of(addons, "AWS::IAM::ManagedPolicy").values()
            for statement in policy.get("PolicyDocument", {}).get("Statement", [])]


def as_list(value):
    return [value] if isinstance(value, str) else list(value)


def addon_actions(service):
    return sorted({a for s in addon_statements(service) for a in as_list(s.get("Action", []))})


# The drain watcher's calls, the same for both services (issue 17): protection of the task itself,
# and reads of the task's own service and of that service's tasks.
DRAIN_WATCH_ACTIONS = ["ecs:DescribeServices", "ecs:DescribeTasks", "ecs:GetTaskProtection",
                       "ecs:ListTasks", "ecs:UpdateTaskProtection"]


def scoped(service):
    """Every statement names ARNs, except ListTasks (no task or service ARN to name), which must be
    limited to the environment's cluster by an ArnEquals condition on ecs:cluster."""
    for statement in addon_statements(service):
        actions = as_list(statement.get("Action", []))
        resources = as_list(statement.get("Resource", []))
        if actions == ["ecs:ListTasks"]:
            expect(f"{service} ListTasks resource", resources, ["*"])
            cluster = statement.get("Condition", {}).get("ArnEquals", {}).get("ecs:cluster")
            if not (isinstance(cluster, dict) and "Fn::Sub" in cluster
                    and ":cluster/${ClusterName}" in str(cluster["Fn::Sub"])):
                findings.append(f"{service}: ListTasks is not limited to the environment's cluster "
                                f"(ArnEquals ecs:cluster): {statement.get('Condition')!r}")
        elif "*" in resources:
            findings.append(f"{service}: {actions} allowed on every resource")
        elif "ecs:ListTasks" in actions:
            findings.append(f"{service}: ecs:ListTasks shares a statement with {actions}")


def env_names(c):
    return {e.get("Name") for e in c.get("Environment", [])}


def chat_backplane(c):
    """The optional chat backplane addon: wired to CHAT_BACKPLANE_URL, reachable on 6379 from the
    environment's tasks and from nowhere else."""
    addons = load(f"{out}/websocket.addons.stack.yml")
    caches = resources_of(addons, "AWS::ElastiCache::ServerlessCache")
    if not caches:
        return  # the addon was deleted: chat stays within each task
    # Off unless the user turns it on: a cache costs money and one task gains nothing from it.
    expect("chat backplane parameter default", addons.get("Parameters", {}).get("ChatBackplane", {}).get("Default"), "off")
    expect("chat backplane engine", [p.get("Engine") for p in caches.values()], ["valkey"])
    url = {e.get("Name"): e.get("Value") for e in c.get("Environment", [])}.get("CHAT_BACKPLANE_URL")
    expect("websocket CHAT_BACKPLANE_URL", url,
           {"Fn::GetAtt": ["AddonsStack", "Outputs.ChatBackplaneUrl"]})
    for name, group in resources_of(addons, "AWS::EC2::SecurityGroup").items():
        rules = [(r.get("IpProtocol"), r.get("FromPort"), r.get("ToPort"),
                  r.get("SourceSecurityGroupId"), r.get("CidrIp"))
                 for r in group.get("SecurityGroupIngress", [])]
        expect(f"chat backplane security group {name} ingress", rules,
               [("tcp", 6379, 6379,
                 {"Fn::ImportValue": {"Fn::Sub": "${App}-${Env}-EnvironmentSecurityGroup"}}, None)])


def env_value(c, name):
    return {e.get("Name"): e.get("Value") for e in c.get("Environment", [])}.get(name)


def websocket(t):
    c = container(t)
    chat_backplane(c)
    expect("websocket StopTimeout", c.get("StopTimeout"), 30)
    # Above the environment ALB's idle timeout (the ALB default, 60 s: the rendered environment
    # template sets none), so that the ALB closes idle keep-alive connections first.
    expect("websocket HTTP_IDLE_TIMEOUT_SECS", env_value(c, "HTTP_IDLE_TIMEOUT_SECS"), "75")
    groups = list(resources_of(t, "AWS::ElasticLoadBalancingV2::TargetGroup").values())
    expect("websocket target groups", len(groups), 1)
    if groups:
        g = groups[0]
        expect("websocket health check path", g.get("HealthCheckPath"), "/healthz")
        delay = {a.get("Key"): a.get("Value") for a in g.get("TargetGroupAttributes", [])}
        expect("websocket deregistration delay",
               str(delay.get("deregistration_delay.timeout_seconds")), "300")
    expect("websocket task role actions", addon_actions("websocket"), DRAIN_WATCH_ACTIONS)
    scoped("websocket")


def queue_consumer(t):
    c = container(t)
    expect("queue-consumer StopTimeout", c.get("StopTimeout"), 120)
    expect("queue-consumer health check", c.get("HealthCheck", {}).get("Command"),
           ["CMD", "/usr/local/bin/queue-consumer", "health"])
    if "COPILOT_QUEUE_URI" not in env_names(c):
        findings.append("queue-consumer: COPILOT_QUEUE_URI is not set in the container")
    queue = t.get("Resources", {}).get("EventsQueue", {}).get("Properties", {})
    expect("queue-consumer queue visibility timeout", queue.get("VisibilityTimeout"), 60)
    redrive = queue.get("RedrivePolicy", {})
    expect("queue-consumer dead-letter after", redrive.get("maxReceiveCount"), 3)
    if "DeadLetterQueue" not in t.get("Resources", {}):
        findings.append("queue-consumer: no dead-letter queue was rendered")
    expect("queue-consumer task role actions", addon_actions("queue-consumer"),
           DRAIN_WATCH_ACTIONS + ["sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"])
    scoped("queue-consumer")


checks = {"websocket": websocket, "queue-consumer": queue_consumer}
for service in services:
    check = checks.get(service)
    if check is None:
        findings.append(f"{service}: no expectations written for this service")
        continue
    check(load(f"{out}/{service}-{env}.stack.yml"))

for f in findings:
    print(f"  - {f}")
sys.exit(1 if findings else 0)
