package manifests

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	bouncerd "github.com/sluice-mta/sluice/bouncer/daemon"
	delivererd "github.com/sluice-mta/sluice/deliverer/daemon"
	ingressd "github.com/sluice-mta/sluice/ingress/daemon"
	schedulerd "github.com/sluice-mta/sluice/scheduler/daemon"
)

// natsVersion is the nats-server version the services are built and tested
// with: the one services/go.mod requires, without its "v".
func natsVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../services/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("services/go.mod requires no nats-server")
	}
	return string(m[1])
}

// imageTag returns the tag of an image reference, "" when it has none.
// A digest (@sha256:...) pins too and counts as a tag.
func imageTag(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		return image[i+1:]
	}
	name := image[strings.LastIndex(image, "/")+1:]
	if i := strings.Index(name, ":"); i >= 0 {
		return name[i+1:]
	}
	return ""
}

// checkPinned reports an image that is not pinned to a version.
func checkPinned(image string) error {
	switch tag := imageTag(image); {
	case image == "":
		return fmt.Errorf("no image")
	case tag == "":
		return fmt.Errorf("image %q has no tag", image)
	case tag == "latest" || strings.HasPrefix(tag, "latest-"):
		return fmt.Errorf("image %q is tagged %q", image, tag)
	case strings.Contains(tag, "${"):
		return fmt.Errorf("image %q has an unresolved tag", image)
	}
	return nil
}

func TestImageTag(t *testing.T) {
	for image, want := range map[string]string{
		"nats:2.15.2": "2.15.2", "nats": "", "registry:5000/sluice-ingress": "", "registry:5000/a/b:1.2": "1.2",
		"nats:latest": "latest", "x@sha256:abc": "sha256:abc",
	} {
		if got := imageTag(image); got != want {
			t.Errorf("imageTag(%q) = %q, want %q", image, got, want)
		}
	}
	for _, bad := range []string{"nats", "nats:latest", "sluice-ingress:${TAG}", ""} {
		if checkPinned(bad) == nil {
			t.Errorf("checkPinned(%q) passed", bad)
		}
	}
}

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// checkTrust reports a trusted network of a Sluice configuration that is
// wider than loopback: a relay trusting it would relay for whoever arrives
// from it, and in a container or a pod that is other machines.
func checkTrust(sluiceYAML []byte) error {
	var c struct {
		Ingress struct {
			Trusted *[]string `yaml:"trusted_networks"`
		} `yaml:"ingress"`
	}
	if err := yaml.Unmarshal(sluiceYAML, &c); err != nil {
		return err
	}
	if c.Ingress.Trusted == nil {
		// The default is loopback, but a file that relies on it says
		// nothing to its reader; the shipped files say it.
		return fmt.Errorf("ingress.trusted_networks is not set")
	}
	for _, n := range *c.Ingress.Trusted {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return fmt.Errorf("ingress.trusted_networks: %q: %v", n, err)
		}
		inside := false
		for _, l := range loopback {
			if l.Bits() <= p.Bits() && l.Contains(p.Addr()) {
				inside = true
			}
		}
		if !inside {
			return fmt.Errorf("ingress.trusted_networks: %s is wider than loopback", n)
		}
	}
	return nil
}

func TestCheckTrust(t *testing.T) {
	for _, ok := range []string{"ingress: {trusted_networks: []}", "ingress: {trusted_networks: [127.0.0.0/8, \"::1/128\"]}", "ingress: {trusted_networks: [127.0.0.1/32]}"} {
		if err := checkTrust([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"ingress: {}", "ingress: {trusted_networks: [10.0.0.0/8]}", "ingress: {trusted_networks: [127.0.0.0/8, 172.16.0.0/12]}",
		"ingress: {trusted_networks: [0.0.0.0/0]}", "ingress: {trusted_networks: [::/0]}", "ingress: {trusted_networks: [127.0.0.0/7]}"} {
		if checkTrust([]byte(bad)) == nil {
			t.Errorf("%s passed", bad)
		}
	}
}

// mounted is a file a container sees beside its sluice.yaml: src on the
// host, dst relative to sluice.yaml's directory.
type mounted struct{ src, dst string }

// loadWithServices loads a Sluice configuration file with every service's
// own loader, as each service's main would: decoding is strict, so a
// misspelt key fails here, and so does a value a service's validation
// refuses.
// Files mounted beside it are copied beside it first.
func loadWithServices(t *testing.T, name string, sluiceYAML []byte, beside ...mounted) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, sluiceYAML, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, m := range beside {
		b, err := os.ReadFile(m.src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, m.dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Variables of the environment the test runs in must not change what
	// the file says.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "SLUICE_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	if cfg, err := ingressd.Load(path); err != nil {
		t.Errorf("%s: ingress: %v", name, err)
	} else if cfg.Queue.Replicas != 3 {
		t.Errorf("%s: queue.replicas = %d, want 3", name, cfg.Queue.Replicas)
	}
	if _, err := schedulerd.Load(path); err != nil {
		t.Errorf("%s: scheduler: %v", name, err)
	}
	if _, err := delivererd.Load(path); err != nil {
		t.Errorf("%s: deliverer: %v", name, err)
	}
	if _, err := bouncerd.Load(path); err != nil {
		t.Errorf("%s: bouncer: %v", name, err)
	}
}
