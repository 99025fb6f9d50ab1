package manifests

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestGrafanaDashboard parses deploy/grafana/sluice.json as Grafana reads
// it: valid JSON, panels with unique ids that do not overlap, every target
// with a query, and every Sluice metric a query names declared by a service
// (a literal "sluice_..." in its Go source), so a renamed metric cannot
// leave a panel empty.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../grafana/sluice.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			GridPos struct {
				X, Y, W, H int
			} `json:"gridPos"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("sluice.json: %v", err)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard uid %q, %d panels", d.UID, len(d.Panels))
	}
	ids := map[int]string{}
	cells := map[[2]int]string{}
	metrics := map[string]string{} // metric -> panel title
	metric := regexp.MustCompile(`\bsluice_[a-z0-9_]+`)
	for _, p := range d.Panels {
		if other, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := cells[[2]int{x, y}]; ok {
					t.Errorf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
					x, y = g.X+g.W, g.Y+g.H
				}
				cells[[2]int{x, y}] = p.Title
			}
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if strings.TrimSpace(q.Expr) == "" || q.RefID == "" {
				t.Errorf("panel %q: target %+v without expr or refId", p.Title, q)
			}
			for _, m := range metric.FindAllString(q.Expr, -1) {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					m = strings.TrimSuffix(m, suffix)
				}
				metrics[m] = p.Title
			}
		}
	}
	declared := map[string]bool{}
	for _, dir := range []string{"ingress", "scheduler", "deliverer", "bouncer", "services"} {
		err := filepath.WalkDir(filepath.Join("../..", dir), func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range regexp.MustCompile(`"(sluice_[a-z0-9_]+)"`).FindAllStringSubmatch(string(src), -1) {
				declared[m[1]] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for m, title := range metrics {
		if !declared[m] {
			t.Errorf("panel %q queries %s, which no service declares", title, m)
		}
	}
	for _, want := range []string{"sluice_deliverer_site_concurrency_limit", "sluice_deliverer_site_suspensions_total", "sluice_deliverer_site_throttled_total"} {
		if _, ok := metrics[want]; !ok {
			t.Errorf("no panel shows %s", want)
		}
	}
}
