// Package manifests checks the deployment files Sluice ships, as a reviewer
// would before running them: the Kubernetes kustomization
// (deploy/kubernetes, rendered with the kustomize Go API, since test
// machines have no kubectl) and the compose file (deploy/compose), parsed.
// The tests assert what makes them safe and runnable: pinned images, health
// checks and probes everywhere, a three-node NATS with replicated streams,
// no relay trust that outside traffic can reach, and configuration that the
// services' own loaders accept. It has no code of its own.
package manifests
