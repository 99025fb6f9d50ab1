package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

func TestClassify(t *testing.T) {
	own := Permanent(sluicev1.Reason_REASON_NULL_MX, 556, "5.1.10", "null MX")
	tests := []struct {
		name      string
		err       error
		fallback  sluicev1.Reason
		permanent bool
		code      int
		enhanced  string
		reason    sluicev1.Reason
		text      string
	}{
		{"550 with enhanced code", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
			sluicev1.Reason_REASON_REMOTE, true, 550, "5.1.1", sluicev1.Reason_REASON_REMOTE, "no such user"},
		{"450 wrapped", fmt.Errorf("rcpt: %w", &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "busy"}),
			sluicev1.Reason_REASON_REMOTE, false, 450, "4.2.1", sluicev1.Reason_REASON_REMOTE, "busy"},
		{"421 without enhanced code", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.NoEnhancedCode, Message: "closing"},
			sluicev1.Reason_REASON_REMOTE, false, 421, "4.0.0", sluicev1.Reason_REASON_REMOTE, "closing"},
		{"554 without enhanced code", &smtp.SMTPError{Code: 554, Message: "go away"},
			sluicev1.Reason_REASON_REMOTE, true, 554, "5.0.0", sluicev1.Reason_REASON_REMOTE, "go away"},
		// The text says "permanent" and "5.1.1" but the code is 4xx: the code decides.
		{"text is not read", &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "5.1.1 permanent failure"},
			sluicev1.Reason_REASON_REMOTE, false, 452, "4.5.3", sluicev1.Reason_REASON_REMOTE, "5.1.1 permanent failure"},
		{"STARTTLS refusal keeps TLS reason", &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "TLS not available"},
			sluicev1.Reason_REASON_TLS, false, 454, "4.7.0", sluicev1.Reason_REASON_TLS, "TLS not available"},
		{"own error passes through", fmt.Errorf("x: %w", own), sluicev1.Reason_REASON_DNS, true, 556, "5.1.10", sluicev1.Reason_REASON_NULL_MX, "null MX"},
		{"deadline", os.ErrDeadlineExceeded, sluicev1.Reason_REASON_REMOTE, false, 451, "4.4.2", sluicev1.Reason_REASON_TIMEOUT, ""},
		{"context deadline", context.DeadlineExceeded, sluicev1.Reason_REASON_DNS, false, 451, "4.4.2", sluicev1.Reason_REASON_TIMEOUT, ""},
		{"connection reset is unknown: temporary", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")},
			sluicev1.Reason_REASON_CONNECT, false, 451, "4.4.1", sluicev1.Reason_REASON_CONNECT, ""},
		{"unknown error is temporary internal", io.ErrUnexpectedEOF, sluicev1.Reason_REASON_UNSPECIFIED, false, 451, "4.0.0", sluicev1.Reason_REASON_INTERNAL, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := Classify(tc.err, tc.fallback, "mx.example[192.0.2.1]")
			if e.Permanent != tc.permanent || e.Code != tc.code || e.Enhanced != tc.enhanced || e.Reason != tc.reason {
				t.Errorf("got perm=%v %d %s %s, want perm=%v %d %s %s", e.Permanent, e.Code, e.Enhanced, e.Reason,
					tc.permanent, tc.code, tc.enhanced, tc.reason)
			}
			if tc.text != "" && e.Text != tc.text {
				t.Errorf("text %q, want %q", e.Text, tc.text)
			}
			var se *smtp.SMTPError
			if errors.As(tc.err, &se) {
				if !errors.Is(e, se) {
					t.Errorf("%v does not wrap the reply", e)
				}
			} else if !errors.Is(e, tc.err) && e != own {
				t.Errorf("%v does not wrap %v", e, tc.err)
			}
		})
	}
	if Classify(nil, sluicev1.Reason_REASON_DNS, "") != nil {
		t.Error("nil error classified")
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Code: 550, Enhanced: "5.1.1", Text: "no such user", RemoteHost: "mx[192.0.2.1]"}
	if got := e.Error(); got != "550 5.1.1 no such user (mx[192.0.2.1])" {
		t.Errorf("%q", got)
	}
	if e.Outcome() != sluicev1.Outcome_OUTCOME_TEMPORARY {
		t.Error("a zero Permanent must be temporary")
	}
}
