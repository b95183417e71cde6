"""podsim: spectrain's pipeline run as on a Kubernetes node, on one machine (a development tool, not the product).

`python -m podsim run [the options of spectrain run]` runs every step as a pod would (podsim/pods.py: its own
network namespace, scratch home, the model cache mounted at /models, its processes stopped when it returns) and
serve_mode 'cluster' against a simulated Kubernetes API (podsim/fake_kube.py) that runs the vLLM Deployment as a
pod: what only works because the steps share a machine fails here, not first on a cluster. Root only (`ip netns`).
It is a SIMULATION: podsim/pods.py says what is and is not simulated. Nothing in spectrain imports it; it runs
from the project's checkout, with the virtualenvs `make envs` creates. PODSIM_SERVE_IMAGE_ENV='NAME=VALUE ...' adds to
the serve image's environment, as its ENV lines would (the test suite gives the vLLM pod a stand-in vLLM so).
"""
