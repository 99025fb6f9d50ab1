package manifests

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// composeFile is the part of a compose file the checks read.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string         `yaml:"image"`
	Entrypoint  []string       `yaml:"entrypoint"`
	Restart     string         `yaml:"restart"`
	Ports       []string       `yaml:"ports"`
	Volumes     []string       `yaml:"volumes"`
	Healthcheck map[string]any `yaml:"healthcheck"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

var defaultVar = regexp.MustCompile(`\$\{[A-Z0-9_]+:-([^}]*)\}`)

// resolve substitutes each ${VAR:-default} with its default, which is what
// a user who sets nothing runs.
func resolve(s string) string { return defaultVar.ReplaceAllString(s, "$1") }

func readCompose(t *testing.T, path string) composeFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	// yaml.v3 expands the anchors and merge keys the file uses.
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

// sluiceServices are the compose services that run Sluice's daemons.
var sluiceServices = []string{"ingress", "scheduler", "deliverer-1", "deliverer-2", "bouncer"}

func TestCompose(t *testing.T) {
	f := readCompose(t, "../compose/compose.yaml")
	version := natsVersion(t)

	var nats, deliverers []string
	for name, s := range f.Services {
		image := resolve(s.Image)
		if err := checkPinned(image); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
		if strings.HasPrefix(image, "nats:") {
			nats = append(nats, name)
			if tag := imageTag(image); tag != version {
				t.Errorf("service %s runs %s, want nats:%s (services/go.mod)", name, image, version)
			}
		}
		if strings.HasPrefix(image, "sluice-deliverer:") {
			deliverers = append(deliverers, name)
		}
		// Everything that keeps running has a health check; a one-shot
		// (restart "no") needs none.
		if s.Restart != "no" {
			test, _ := s.Healthcheck["test"].([]any)
			if len(test) < 2 || test[0] == "NONE" || s.Healthcheck["disable"] == true {
				t.Errorf("service %s has no health check", name)
			}
		}
		// What only the operator uses listens on loopback only.
		for _, p := range s.Ports {
			p = resolve(p)
			public := strings.HasSuffix(p, ":2525") || strings.HasSuffix(p, ":2587") || strings.HasSuffix(p, ":2465")
			if !public && !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s publishes %q beyond loopback", name, p)
			}
		}
	}
	slices.Sort(nats)
	if !slices.Equal(nats, []string{"nats-1", "nats-2", "nats-3"}) {
		t.Errorf("NATS services %v, want nats-1, nats-2, nats-3", nats)
	}
	if len(deliverers) != 2 {
		t.Errorf("deliverers %v, want two", deliverers)
	}
	for _, name := range sluiceServices {
		s, ok := f.Services[name]
		if !ok {
			t.Errorf("no service %s", name)
			continue
		}
		for _, n := range nats {
			if c := s.DependsOn[n].Condition; c != "service_healthy" {
				t.Errorf("service %s depends on %s with condition %q, want service_healthy", name, n, c)
			}
		}
		if hc, _ := s.Healthcheck["test"].([]any); !slices.Contains(hc, any("http://127.0.0.1:9100/readyz")) {
			t.Errorf("service %s: health check %v, want /readyz on its metrics port", name, hc)
		}
	}
	for _, n := range nats {
		hc, _ := f.Services[n].Healthcheck["test"].([]any)
		if !slices.Contains(hc, any("http://127.0.0.1:8222/healthz?js-enabled-only=true")) {
			t.Errorf("service %s: health check %v, want /healthz?js-enabled-only=true on 8222", n, hc)
		}
	}
	// The relay/MX port is published to the world; the submission ports
	// too. The relay must then trust nothing Docker's forwarding reaches.
	ingress := f.Services["ingress"]
	for _, want := range []string{"25:2525", "587:2587", "465:2465"} {
		found := false
		for _, p := range ingress.Ports {
			found = found || resolve(p) == want
		}
		if !found {
			t.Errorf("ingress does not publish %s (ports %v)", want, ingress.Ports)
		}
	}

	conf, err := os.ReadFile("../compose/sluice.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := checkTrust(conf); err != nil {
		t.Errorf("compose sluice.yaml: %v", err)
	}
	var c struct {
		NATS struct {
			URL string `yaml:"url"`
		} `yaml:"nats"`
	}
	if err := yaml.Unmarshal(conf, &c); err != nil {
		t.Fatal(err)
	}
	for _, n := range nats {
		if !strings.Contains(c.NATS.URL, "nats://"+n+":4222") {
			t.Errorf("nats.url %q does not list %s", c.NATS.URL, n)
		}
	}
	// What the deliverers mount beside sluice.yaml (the shaping file it
	// names), as they mount it.
	var beside []mounted
	for _, name := range []string{"deliverer-1", "deliverer-2"} {
		var files []mounted
		for _, v := range f.Services[name].Volumes {
			src, dst, _ := strings.Cut(strings.TrimSuffix(v, ":ro"), ":")
			if rel, ok := strings.CutPrefix(dst, "/etc/sluice/"); ok && rel != "sluice.yaml" {
				files = append(files, mounted{src: filepath.Join("../compose", src), dst: rel})
			}
		}
		if !slices.Contains(files, mounted{src: "../shaping/providers.yaml", dst: "shaping/providers.yaml"}) {
			t.Errorf("%s mounts %v beside sluice.yaml, want the shipped shaping file at /etc/sluice/shaping/providers.yaml", name, files)
		}
		beside = files
	}
	loadWithServices(t, "compose sluice.yaml", conf, beside...)

	natsConf, err := os.ReadFile("../compose/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nats {
		if !strings.Contains(string(natsConf), "nats://"+n+":6222") {
			t.Errorf("nats.conf has no route to %s", n)
		}
	}
}

// TestComposeLocal checks that the override the compose test uses swaps
// NATS for the local build of the same version and nothing else.
func TestComposeLocal(t *testing.T) {
	f := readCompose(t, "../compose/compose.local.yaml")
	base := readCompose(t, "../compose/compose.yaml")
	for name, s := range f.Services {
		if _, ok := base.Services[name]; !ok {
			t.Errorf("the override names service %s, which compose.yaml has not", name)
		}
		if s.Image == "" {
			continue
		}
		if !strings.HasPrefix(name, "nats-") {
			t.Errorf("the override replaces the image of %s", name)
		}
		if tag := imageTag(s.Image); tag != natsVersion(t) {
			t.Errorf("the override runs %s for %s, want version %s", s.Image, name, natsVersion(t))
		}
	}
}
