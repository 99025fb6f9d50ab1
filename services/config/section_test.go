package config

import "testing"

// TestDecodeSection: a file holding one section's content is decoded as
// strictly as a whole configuration, and a section's name at its top level
// is an unknown key there (Decode accepts it unread).
func TestDecodeSection(t *testing.T) {
	type section struct {
		Limit int               `yaml:"limit"`
		Sites map[string]string `yaml:"sites"`
	}
	var s section
	if err := DecodeSection([]byte("limit: 3\nsites: {a: b}\n"), &s); err != nil || s.Limit != 3 || s.Sites["a"] != "b" {
		t.Fatalf("decoded %+v, %v", s, err)
	}
	for _, c := range []struct{ doc, want string }{
		{"limit: 3\nlimt: 4\n", `line 2: unknown key "limt" at the top level (did you mean "limit"?)`},
		{"deliverer: {limit: 3}\n", `line 1: unknown key "deliverer" at the top level (known: limit, sites)`},
	} {
		if err := DecodeSection([]byte(c.doc), &section{}); err == nil || err.Error() != c.want {
			t.Errorf("%q: %v, want %s", c.doc, err, c.want)
		}
	}
	if err := Decode([]byte("deliverer: {limit: 3}\n"), &section{}); err != nil {
		t.Errorf("Decode of a section name: %v, want it accepted unread", err)
	}
}
