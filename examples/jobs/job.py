#!/usr/bin/env python3
"""A job for queue-consumer's JOB_COMMAND (or `queue-consumer run -- python3 job.py`).

The worker starts this program once per message, without a shell:

* the message body is on stdin;
* JOB_MESSAGE_ID, JOB_RECEIVE_COUNT and, on a FIFO queue, JOB_GROUP_ID are in the environment,
  with everything the worker itself was given (the job's own settings too);
* what it prints goes to the worker's log, a line at a time, with the message ID;
* exit status 0 deletes the message; any other status is a failure: the message comes back after a
  back-off, and after the queue's maxReceiveCount it goes to the dead-letter queue;
* when the worker must stop the job it gets SIGTERM, then SIGKILL if it is still running
  SHUTDOWN_TIMEOUT_SECS later at the worker's own shutdown, or 4.5 s later for a drain deadline
  or the job's timeout; either way the message goes back to the queue. A job can therefore run more than once: make it safe to repeat.

This one counts the words of {"text": "..."}.
"""

import json
import os
import signal
import sys


def stop(signum, _frame):
    # Clean up here (temporary files, a half-written upload). Exiting on SIGTERM is enough: the
    # message goes back to the queue whatever the status.
    print("stopping: SIGTERM", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    message_id = os.environ["JOB_MESSAGE_ID"]
    attempt = int(os.environ["JOB_RECEIVE_COUNT"])
    group = os.environ.get("JOB_GROUP_ID")
    body = sys.stdin.read()
    try:
        text = json.loads(body)["text"]
    except (ValueError, KeyError, TypeError) as e:
        # stderr is logged at warn level; status 1 makes it a failure, retried with back-off.
        print(f"not a job: {e!r}", file=sys.stderr)
        return 1
    where = f" in group {group}" if group else ""
    # flush=True, or Python keeps stdout in a buffer until it exits.
    print(f"{len(text.split())} words (message {message_id}, attempt {attempt}{where})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
