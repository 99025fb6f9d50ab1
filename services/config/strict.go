package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Sections are the top-level keys of a Sluice configuration file. One file
// configures the whole system, so a service accepts the sections of the
// others without reading them; each section is checked strictly by the
// service that owns it (and nats and queue by all of them).
var Sections = []string{"nats", "queue", "ingress", "scheduler", "deliverer", "bouncer"}

// checkKeys reports the first key of doc that cfg does not have, by line:
// a misspelt key is an error, never a setting silently ignored. With top,
// top-level keys that are Sections of other services are allowed.
func checkKeys(doc *yaml.Node, cfg any, top bool) error {
	if doc == nil || doc.Kind == 0 {
		return nil
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil
		}
		doc = doc.Content[0]
	}
	return walk(doc, reflect.TypeOf(cfg), "", top)
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func walk(n *yaml.Node, t reflect.Type, path string, top bool) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // yaml reports the type mismatch itself
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" { // merge key: check what is merged
				if err := walk(v, t, path, top); err != nil {
					return err
				}
				continue
			}
			ft, ok := fields[k.Value]
			if !ok {
				if top && slices.Contains(Sections, k.Value) {
					continue
				}
				return unknownKey(k, path, fields, top)
			}
			if err := walk(v, ft, join(path, k.Value), false); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 1; i < len(n.Content); i += 2 {
			if err := walk(n.Content[i], t.Elem(), join(path, n.Content[i-1].Value), false); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, v := range n.Content {
			if err := walk(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i), false); err != nil {
				return err
			}
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps the YAML keys of struct t to their types, with the fields
// of inline structs as their own.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range yamlFields(ft) {
					fields[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name) // yaml.v3's default
		}
		fields[name] = f.Type
	}
	return fields
}

func unknownKey(k *yaml.Node, path string, fields map[string]reflect.Type, top bool) error {
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	msg := fmt.Sprintf("line %d: unknown key %q %s", k.Line, k.Value, where)
	known := make([]string, 0, len(fields))
	for name := range fields {
		known = append(known, name)
	}
	if top {
		for _, s := range Sections {
			if !slices.Contains(known, s) {
				known = append(known, s)
			}
		}
	}
	slices.Sort(known)
	if best := closest(k.Value, known); best != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", best)
	} else {
		msg += " (known: " + strings.Join(known, ", ") + ")"
	}
	return fmt.Errorf("%s", msg)
}

// closest returns the known key within an edit distance of a third of the
// key's length (at least 2), or "".
func closest(key string, known []string) string {
	best, bestD := "", max(2, len(key)/3)+1
	for _, k := range known {
		if d := distance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
