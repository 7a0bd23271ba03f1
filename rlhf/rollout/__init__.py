"""Rollout engines behind one interface: generate, sync weights, sleep/wake, shutdown.

Driver side (``base.Rollout``): the on-policy loop asks its rollout for responses and weight syncs and never
looks at the backend's name. Two shapes exist:

* ``InPolicyRollout``: the policy ranks generate, each with its own ``Generator`` (HF generate on the trained
  module, or an in-process vLLM engine on the rank's GPU) built from ``backends.BACKENDS``.
* ``FleetRollout``: separate engine actors (``rlhf.workers.rollout.RolloutWorker``) fed by a weight broadcast.

Worker side (``base.Generator``): what a policy rank holds to answer ``generate``; ``hf.HFGenerator`` and
``vllm.ColocatedVLLM``. Weights for engines are named and gathered in ``weights.py``.
"""
