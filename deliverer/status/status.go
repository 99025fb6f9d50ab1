// Package status is the one error vocabulary of the delivery path. Every
// failure of an attempt, whether it happened in DNS, on the network, in TLS or
// in a remote server's reply, becomes an *Error that says whether it is
// permanent, which SMTP reply code and RFC 3463 enhanced status code describe
// it, why it happened (a sluicev1.Reason) and which remote host said so.
//
// Two rules hold everywhere: a reply is classified by its code only (4xx is
// temporary, 5xx permanent, RFC 5321 §4.2.1), never by its text; and an error
// we cannot classify is temporary, because retrying a message we could have
// delivered costs little while bouncing it costs the sender their mail.
package status

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Error is a classified delivery failure.
type Error struct {
	// Permanent is true when retrying cannot help (5xx); false for 4xx and
	// for every failure we could not classify.
	Permanent bool
	// Code is the SMTP reply code, the remote server's or our own.
	Code int
	// Enhanced is the RFC 3463 status code, such as "4.4.1".
	Enhanced string
	// Text is the human-readable reply text without the codes.
	Text string
	// Reason says where the failure happened.
	Reason sluicev1.Reason
	// RemoteHost names the server that replied, empty when none did.
	RemoteHost string
	// Err is the underlying error, if any.
	Err error
}

// Error implements error in the form of an SMTP reply.
func (e *Error) Error() string {
	s := strconv.Itoa(e.Code)
	if e.Enhanced != "" {
		s += " " + e.Enhanced
	}
	if e.Text != "" {
		s += " " + e.Text
	}
	if e.RemoteHost != "" {
		s += " (" + e.RemoteHost + ")"
	}
	return s
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Outcome is the per-recipient outcome the error stands for.
func (e *Error) Outcome() sluicev1.Outcome {
	if e.Permanent {
		return sluicev1.Outcome_OUTCOME_PERMANENT
	}
	return sluicev1.Outcome_OUTCOME_TEMPORARY
}

// Temporary returns a temporary error of our own making.
func Temporary(reason sluicev1.Reason, code int, enhanced, text string) *Error {
	return &Error{Code: code, Enhanced: enhanced, Text: text, Reason: reason}
}

// Permanent returns a permanent error of our own making.
func Permanent(reason sluicev1.Reason, code int, enhanced, text string) *Error {
	return &Error{Permanent: true, Code: code, Enhanced: enhanced, Text: text, Reason: reason}
}

// FromReply classifies a reply of a remote server by its code: 5xx is
// permanent, anything else temporary (RFC 5321 §4.2.1). reason is
// REASON_REMOTE unless the caller knows better (a failed STARTTLS reply is
// REASON_TLS).
func FromReply(se *smtp.SMTPError, reason sluicev1.Reason, host string) *Error {
	e := &Error{
		Permanent:  se.Code >= 500 && se.Code <= 599,
		Code:       se.Code,
		Text:       se.Message,
		Reason:     reason,
		RemoteHost: host,
		Err:        se,
	}
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		ec := se.EnhancedCode
		e.Enhanced = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	} else {
		e.Enhanced = defaultEnhanced(se.Code)
	}
	return e
}

// defaultEnhanced gives a reply without an enhanced code the generic one of
// its class (RFC 3463 §3.1: X.0.0 is "other undefined status").
func defaultEnhanced(code int) string {
	switch code / 100 {
	case 5:
		return "5.0.0"
	case 2:
		return "2.0.0"
	default:
		return "4.0.0"
	}
}

// Classify turns any error of a delivery step into an *Error. An *Error
// inside err is returned as it is; a remote reply (*smtp.SMTPError, found with
// errors.As) is classified by its code with reason; a timeout becomes
// REASON_TIMEOUT; anything else is temporary with fallback as reason,
// because unknown errors are temporary.
func Classify(err error, fallback sluicev1.Reason, host string) *Error {
	if err == nil {
		return nil
	}
	var de *Error
	if errors.As(err, &de) {
		return de
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		r := fallback
		if r == sluicev1.Reason_REASON_UNSPECIFIED || r == sluicev1.Reason_REASON_INTERNAL {
			r = sluicev1.Reason_REASON_REMOTE
		}
		return FromReply(se, r, host)
	}
	if isTimeout(err) {
		return &Error{Code: 451, Enhanced: "4.4.2", Text: "timeout talking to remote server", Reason: sluicev1.Reason_REASON_TIMEOUT, RemoteHost: host, Err: err}
	}
	if fallback == sluicev1.Reason_REASON_UNSPECIFIED {
		fallback = sluicev1.Reason_REASON_INTERNAL
	}
	return &Error{Code: 451, Enhanced: enhancedFor(fallback), Text: err.Error(), Reason: fallback, RemoteHost: host, Err: err}
}

// enhancedFor is the RFC 3463 code we report for a temporary failure of our
// own with this reason.
func enhancedFor(r sluicev1.Reason) string {
	switch r {
	case sluicev1.Reason_REASON_DNS:
		return "4.4.3" // directory server failure
	case sluicev1.Reason_REASON_CONNECT:
		return "4.4.1" // no answer from host
	case sluicev1.Reason_REASON_TIMEOUT:
		return "4.4.2" // bad connection
	case sluicev1.Reason_REASON_TLS:
		return "4.7.0" // security or policy status
	case sluicev1.Reason_REASON_PROTOCOL:
		return "4.5.0" // other protocol status
	default:
		return "4.0.0"
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
