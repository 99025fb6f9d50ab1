package manifests

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/sluice-mta/sluice/proto/wire"
)

// object is one rendered Kubernetes object.
type object map[string]any

func (o object) kind() string { return str(o, "kind") }
func (o object) name() string { return str(o, "metadata", "name") }
func (o object) id() string   { return o.kind() + "/" + o.name() }

// get walks maps by key and lists by index ("0").
func get(v any, path ...string) any {
	for _, p := range path {
		switch x := v.(type) {
		case object:
			v = map[string]any(x)[p]
		case map[string]any:
			v = x[p]
		case []any:
			var i int
			if _, err := fmt.Sscan(p, &i); err != nil || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func str(v any, path ...string) string { s, _ := get(v, path...).(string); return s }
func list(v any, path ...string) []any { l, _ := get(v, path...).([]any); return l }
func num(v any, path ...string) int {
	switch n := get(v, path...).(type) {
	case int:
		return n
	case int64:
		return int(n)
	case float64:
		return int(n)
	}
	return -1
}
func labels(v any, path ...string) map[string]string {
	out := map[string]string{}
	m, _ := get(v, path...).(map[string]any)
	for k, x := range m {
		out[k], _ = x.(string)
	}
	return out
}

// render builds a kustomization directory as `kubectl apply -k` would.
func render(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var out []object
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, object(m))
	}
	return out
}

func find(objs []object, kind, name string) object {
	for _, o := range objs {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	return nil
}

func ofKind(objs []object, kinds ...string) []object {
	var out []object
	for _, o := range objs {
		if slices.Contains(kinds, o.kind()) {
			out = append(out, o)
		}
	}
	return out
}

// subset reports whether every label of sel is in lbl with the same value.
func subset(sel, lbl map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lbl[k] != v {
			return false
		}
	}
	return true
}

// isSluice tells Sluice's own workloads from NATS.
func isSluice(w object) bool { return strings.HasPrefix(w.name(), "sluice-") }

func TestKubernetes(t *testing.T) {
	base := render(t, "../kubernetes")
	checkKubernetes(t, base)

	if hpa := find(base, "HorizontalPodAutoscaler", "sluice-deliverer"); hpa == nil {
		t.Error("no CPU HorizontalPodAutoscaler for the deliverers (the fallback without KEDA)")
	} else {
		checkScaleTarget(t, base, hpa, "spec", "scaleTargetRef")
		if str(hpa, "spec", "metrics", "0", "resource", "name") != "cpu" {
			t.Errorf("HPA scales on %v, want cpu", get(hpa, "spec", "metrics"))
		}
	}
	if len(ofKind(base, "ScaledObject")) != 0 {
		t.Error("the base has a ScaledObject: it needs KEDA, which the base must not")
	}
}

func TestKubernetesKEDA(t *testing.T) {
	objs := render(t, "../kubernetes/keda")
	checkKubernetes(t, objs)

	// Two autoscalers on one Deployment fight; KEDA makes its own HPA.
	if hpa := find(objs, "HorizontalPodAutoscaler", "sluice-deliverer"); hpa != nil {
		t.Error("the KEDA overlay keeps the CPU HPA beside the ScaledObject")
	}
	so := find(objs, "ScaledObject", "sluice-deliverer")
	if so == nil {
		t.Fatal("no ScaledObject for the deliverers")
	}
	checkScaleTarget(t, objs, so, "spec", "scaleTargetRef")
	var consumers []string
	for _, tr := range list(so, "spec", "triggers") {
		if typ := str(tr, "type"); typ != "nats-jetstream" {
			t.Errorf("trigger of type %q, want nats-jetstream", typ)
			continue
		}
		if s := str(tr, "metadata", "stream"); s != wire.StreamJobs {
			t.Errorf("trigger on stream %q, want %s", s, wire.StreamJobs)
		}
		ep := str(tr, "metadata", "natsServerMonitoringEndpoint")
		if !strings.HasSuffix(ep, ":8222") || !strings.Contains(ep, "nats") {
			t.Errorf("trigger asks %q, want a NATS node's monitoring port 8222", ep)
		}
		consumers = append(consumers, str(tr, "metadata", "consumer"))
	}
	for _, class := range wire.Classes {
		if c := wire.DelivererConsumer(class); !slices.Contains(consumers, c) {
			t.Errorf("no trigger on the lag of consumer %s (triggers on %v)", c, consumers)
		}
	}
}

// checkScaleTarget checks that an autoscaler's target is the deliverers'
// Deployment and that it exists.
func checkScaleTarget(t *testing.T, objs []object, o object, path ...string) {
	t.Helper()
	ref := get(o, path...)
	if str(ref, "kind") != "Deployment" || str(ref, "name") != "sluice-deliverer" {
		t.Errorf("%s scales %v, want Deployment sluice-deliverer", o.id(), ref)
	}
	if find(objs, "Deployment", "sluice-deliverer") == nil {
		t.Error("no Deployment sluice-deliverer")
	}
}

// checkKubernetes checks what both renderings must have.
func checkKubernetes(t *testing.T, objs []object) {
	workloads := ofKind(objs, "Deployment", "StatefulSet")
	if len(workloads) != 5 {
		t.Errorf("%d workloads, want NATS and the four services", len(workloads))
	}
	for _, o := range objs {
		if ns := str(o, "metadata", "namespace"); o.kind() != "Namespace" && ns != "sluice" {
			t.Errorf("%s is in namespace %q, want sluice", o.id(), ns)
		}
	}

	// NATS: three nodes, each with its own persistent volume for JetStream.
	nats := find(objs, "StatefulSet", "nats")
	if nats == nil {
		t.Fatal("no NATS StatefulSet")
	}
	if n := num(nats, "spec", "replicas"); n != 3 {
		t.Errorf("NATS replicas = %d, want 3", n)
	}
	vct := list(nats, "spec", "volumeClaimTemplates")
	if len(vct) == 0 {
		t.Error("NATS has no volumeClaimTemplates: JetStream would lose its store with the pod")
	} else {
		data := str(vct[0], "metadata", "name")
		mounted := false
		for _, m := range list(nats, "spec", "template", "spec", "containers", "0", "volumeMounts") {
			mounted = mounted || str(m, "name") == data && str(m, "mountPath") == "/data"
		}
		if !mounted {
			t.Errorf("the claim %q is not mounted at /data, the store_dir", data)
		}
	}
	if img := str(nats, "spec", "template", "spec", "containers", "0", "image"); imageTag(img) != natsVersion(t) {
		t.Errorf("NATS image %s, want the version services/go.mod requires (%s)", img, natsVersion(t))
	}
	if svc := find(objs, "Service", str(nats, "spec", "serviceName")); svc == nil || str(svc, "spec", "clusterIP") != "None" {
		t.Errorf("NATS serviceName %q is not a headless Service", str(nats, "spec", "serviceName"))
	}
	natsConf := str(find(objs, "ConfigMap", "nats-config"), "data", "nats.conf")
	for _, want := range []string{"store_dir: /data", "port: 6222", "nats-0.", "nats-1.", "nats-2.", "http: 8222"} {
		if !strings.Contains(natsConf, want) {
			t.Errorf("nats.conf lacks %q", want)
		}
	}

	// Every container: probes, requests and limits, a pinned image.
	for _, w := range workloads {
		pod := get(w, "spec", "template", "spec")
		containers := append(list(pod, "containers"), list(pod, "initContainers")...)
		if len(containers) == 0 {
			t.Errorf("%s has no containers", w.id())
		}
		for _, c := range list(pod, "containers") {
			id := w.id() + " container " + str(c, "name")
			if err := checkPinned(str(c, "image")); err != nil {
				t.Errorf("%s: %v", id, err)
			}
			for _, r := range []string{"requests", "limits"} {
				for _, res := range []string{"cpu", "memory"} {
					if get(c, "resources", r, res) == nil {
						t.Errorf("%s: no resources.%s.%s", id, r, res)
					}
				}
			}
			ready, live := str(c, "readinessProbe", "httpGet", "path"), str(c, "livenessProbe", "httpGet", "path")
			if isSluice(w) {
				if ready != "/readyz" || live != "/healthz" {
					t.Errorf("%s: readiness %q, liveness %q; want /readyz and /healthz", id, ready, live)
				}
			} else if want := "/healthz?js-enabled-only=true"; ready != want || live != want {
				t.Errorf("%s: readiness %q, liveness %q; want %s", id, ready, live, want)
			}
		}
		// Each pod template is covered by a disruption budget.
		podLabels := labels(w, "spec", "template", "metadata", "labels")
		covered := false
		for _, pdb := range ofKind(objs, "PodDisruptionBudget") {
			covered = covered || subset(labels(pdb, "spec", "selector", "matchLabels"), podLabels)
		}
		if !covered {
			t.Errorf("%s: no PodDisruptionBudget selects its pods", w.id())
		}
		if !subset(labels(w, "spec", "selector", "matchLabels"), podLabels) {
			t.Errorf("%s: its selector does not select its own pods", w.id())
		}
	}

	// Instances named after their pod, as the scheduler and deliverer read.
	for name, env := range map[string]string{"sluice-scheduler": "SLUICE_SCHEDULER_INSTANCE", "sluice-deliverer": "SLUICE_DELIVERER_INSTANCE"} {
		found := false
		for _, e := range list(find(objs, "Deployment", name), "spec", "template", "spec", "containers", "0", "env") {
			found = found || str(e, "name") == env && str(e, "valueFrom", "fieldRef", "fieldPath") == "metadata.name"
		}
		if !found {
			t.Errorf("%s: %s is not set from the pod's name", name, env)
		}
	}

	checkNetworkPolicy(t, objs, nats)

	// The services' configuration: loads with their own loaders, and the
	// relay trusts nothing beyond loopback.
	cm := find(objs, "ConfigMap", "sluice-config")
	conf := str(cm, "data", "sluice.yaml")
	if conf == "" {
		t.Fatal("ConfigMap sluice-config has no sluice.yaml")
	}
	if err := checkTrust([]byte(conf)); err != nil {
		t.Errorf("ConfigMap sluice-config: %v", err)
	}
	loadWithServices(t, "ConfigMap sluice-config", []byte(conf))
}

// checkNetworkPolicy checks that a policy selects the NATS pods and lets
// only Sluice's pods reach the client port and only NATS pods the cluster
// port.
func checkNetworkPolicy(t *testing.T, objs []object, nats object) {
	t.Helper()
	natsLabels := labels(nats, "spec", "template", "metadata", "labels")
	var policy object
	for _, np := range ofKind(objs, "NetworkPolicy") {
		if subset(labels(np, "spec", "podSelector", "matchLabels"), natsLabels) {
			policy = np
		}
	}
	if policy == nil {
		t.Fatal("no NetworkPolicy selects the NATS pods")
	}
	if !slices.Contains(list(policy, "spec", "policyTypes"), any("Ingress")) {
		t.Error("the NATS NetworkPolicy does not restrict ingress")
	}
	sources := map[int][]map[string]string{} // port -> pod selectors allowed
	for _, rule := range list(policy, "spec", "ingress") {
		for _, p := range list(rule, "ports") {
			port := num(p, "port")
			if len(list(rule, "from")) == 0 {
				t.Errorf("NATS port %d is open to everyone", port)
			}
			for _, from := range list(rule, "from") {
				if get(from, "ipBlock") != nil {
					t.Errorf("NATS port %d is open to an address block", port)
				}
				if get(from, "podSelector") != nil {
					sources[port] = append(sources[port], labels(from, "podSelector", "matchLabels"))
				}
			}
		}
	}
	sluicePods := 0
	for _, w := range ofKind(objs, "Deployment") {
		pl := labels(w, "spec", "template", "metadata", "labels")
		ok := false
		for _, sel := range sources[4222] {
			ok = ok || subset(sel, pl)
		}
		if !ok {
			t.Errorf("%s cannot reach NATS on 4222", w.id())
		}
		sluicePods++
	}
	for _, sel := range sources[4222] {
		if subset(sel, natsLabels) || len(sel) == 0 {
			t.Errorf("port 4222 is allowed from %v, which is not only Sluice's pods", sel)
		}
	}
	routes := false
	for _, sel := range sources[6222] {
		routes = routes || subset(sel, natsLabels)
		for _, w := range ofKind(objs, "Deployment") {
			if subset(sel, labels(w, "spec", "template", "metadata", "labels")) {
				t.Errorf("the cluster port 6222 is open to %s", w.id())
			}
		}
	}
	if !routes {
		t.Error("NATS pods cannot reach each other's cluster port 6222")
	}
	if sluicePods != 4 {
		t.Errorf("%d Sluice Deployments, want 4", sluicePods)
	}
}
