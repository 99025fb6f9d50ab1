package policy

import (
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

const (
	high   = sluicev1.Priority_PRIORITY_HIGH
	normal = sluicev1.Priority_PRIORITY_NORMAL
	bulk   = sluicev1.Priority_PRIORITY_BULK
)

func TestClassForMTPriority(t *testing.T) {
	tests := []struct {
		value   int32
		present bool
		want    sluicev1.Priority
	}{
		{0, false, normal},
		{5, false, normal}, // a value without the flag is ignored
		{0, true, normal},
		{1, true, high},
		{9, true, high},
		{-1, true, bulk},
		{-9, true, bulk},
		{42, true, high},
		{-42, true, bulk},
	}
	for _, tt := range tests {
		if got := ClassForMTPriority(tt.value, tt.present); got != tt.want {
			t.Errorf("ClassForMTPriority(%d, %v) = %v, want %v", tt.value, tt.present, got, tt.want)
		}
	}
}

func TestRules(t *testing.T) {
	rules := Rules{
		{Sender: "Alerts@Example.com", Class: "high"},
		{SenderDomain: "news.example.com", Class: "bulk"},
		{SenderDomain: "example.com", RecipientDomain: "partner.test", Class: "high"},
		{RecipientDomain: "slow.test", Class: "BULK"},
		{Sender: NullSender, Class: "bulk"},
	}
	tests := []struct {
		name      string
		sender    string
		rcptDom   string
		mt        int32
		hasMT     bool
		want      sluicev1.Priority
		wantMatch bool
	}{
		{"exact sender, case-insensitive", "alerts@EXAMPLE.com", "any.test", 0, false, high, true},
		{"sender rule wins over MT-PRIORITY", "alerts@example.com", "any.test", -9, true, high, true},
		{"sender domain", "letter@news.example.com", "any.test", 9, true, bulk, true},
		{"sender domain does not match subdomains", "x@sub.news.example.com", "any.test", 0, false, normal, false},
		{"ANDed fields: both match", "bob@example.com", "Partner.TEST", 0, false, high, true},
		{"ANDed fields: one misses", "bob@example.com", "other.test", 0, false, normal, false},
		{"recipient domain rule, class case-insensitive", "bob@elsewhere.test", "slow.test", 9, true, bulk, true},
		{"first match wins", "alerts@example.com", "slow.test", 0, false, high, true},
		{"null sender rule", "", "any.test", 0, false, bulk, true},
		{"null sender does not match domain rules", "", "partner.test", 0, false, bulk, true},
		{"no rule: MT-PRIORITY positive", "bob@elsewhere.test", "any.test", 3, true, high, false},
		{"no rule: MT-PRIORITY negative", "bob@elsewhere.test", "any.test", -3, true, bulk, false},
		{"no rule, no MT-PRIORITY", "bob@elsewhere.test", "any.test", 0, false, normal, false},
	}
	for _, tt := range tests {
		_, matched := rules.Match(tt.sender, tt.rcptDom)
		got := Class(rules, tt.sender, tt.rcptDom, tt.mt, tt.hasMT)
		if got != tt.want || matched != tt.wantMatch {
			t.Errorf("%s: Class = %v (matched %v), want %v (matched %v)", tt.name, got, matched, tt.want, tt.wantMatch)
		}
	}
}

func TestRulesValidate(t *testing.T) {
	tests := []struct {
		rules Rules
		want  string // error prefix, "" for valid
	}{
		{nil, ""},
		{Rules{{SenderDomain: "a.test", Class: "bulk"}}, ""},
		{Rules{{SenderDomain: "a.test", Class: "bulk"}, {Class: "high"}}, "priority_rules[1]: "},
		{Rules{{RecipientDomain: "a.test", Class: "urgent"}}, "priority_rules[0].class: "},
		{Rules{{Sender: "a@a.test"}}, "priority_rules[0].class: "},
	}
	for _, tt := range tests {
		err := tt.rules.Validate()
		if tt.want == "" {
			if err != nil {
				t.Errorf("%+v: unexpected error %v", tt.rules, err)
			}
			continue
		}
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%+v: error %v, want prefix %q", tt.rules, err, tt.want)
		}
	}
	// An invalid rule never matches, even if Validate was skipped.
	if _, ok := (Rules{{Class: "high"}}).Match("a@b.test", "c.test"); ok {
		t.Error("a rule without match fields matched")
	}
}
