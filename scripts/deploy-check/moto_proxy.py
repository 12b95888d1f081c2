"""Starts moto's HTTPS proxy (`moto.proxy`), patched for one bug Copilot trips over.

In moto 5.2.5, ListStackInstances reports each stack instance with a freshly invented StackId
instead of the id of the stack that moto actually created for it. Copilot follows that id to read
the application's infrastructure stack set outputs, so the made-up id makes `copilot svc package`
fail. We swap in the real id before moto serialises the instance, then hand over to moto's own
command line (the arguments are moto's: -H HOST -p PORT).
"""
from moto.cloudformation.models import StackInstance

_original_to_dict = StackInstance.to_dict


def _to_dict_with_real_stack_id(self):
    data = _original_to_dict(self)
    data["StackId"] = self.stack.stack_id
    return data


StackInstance.to_dict = _to_dict_with_real_stack_id

from moto.proxy import main  # noqa: E402  (import after the patch on purpose)

if __name__ == "__main__":
    main()
