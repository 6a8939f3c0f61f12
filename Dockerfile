# The one container image of every cluster configuration in cluster/ (KubeRay and the AWS cluster
# launcher): Ray's official GPU image with ra2batch and its pinned framework versions installed.
#
#   docker build -t registry.example.com/ra2batch:0.1.0 . && docker push registry.example.com/ra2batch:0.1.0
#
# Keep the Ray version (the FROM tag) and the torch/torchvision pins equal to pyproject.toml;
# tests/test_cluster_configs.py checks them.
FROM rayproject/ray:2.60.0-py311-gpu

# kubectl, for the nightly CronJob that creates a RayJob (cluster/kuberay/cronjob-nightly.yaml), so
# that every pod of ra2batch runs this same image. The binary is checked against its published sha256.
ARG KUBECTL_VERSION=v1.33.4
ARG KUBECTL_URL=https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/amd64/kubectl
RUN sudo curl -fsSLo /usr/local/bin/kubectl "${KUBECTL_URL}" \
 && echo "$(curl -fsSL "${KUBECTL_URL}.sha256")  /usr/local/bin/kubectl" | sha256sum --check \
 && sudo chmod 0755 /usr/local/bin/kubectl

# The framework first, in its own layer, so that a code change does not reinstall it.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1

# The code lives where the cluster configs' entry points expect it: /home/ray/ra2batch/jobs/...
WORKDIR /home/ray/ra2batch
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users ra2batch ./ra2batch
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir .
