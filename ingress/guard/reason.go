package guard

import (
	"errors"
	"fmt"
	"net"

	"github.com/emersion/go-smtp"
)

// Reason says why the guard refused a client. Its String is the value of
// the reason label of the guard's metrics.
type Reason int

// Reasons.
const (
	// ReasonBareLF: an LF not preceded by CR (SMTP smuggling).
	ReasonBareLF Reason = iota + 1
	// ReasonBareCR: a CR not followed by LF (SMTP smuggling).
	ReasonBareCR
	// ReasonLineTooLong: a line longer than the configured maximum.
	ReasonLineTooLong
	// ReasonTimeout: a line, or the whole message content, did not arrive
	// in time (slow or silent client).
	ReasonTimeout
	// ReasonTooManyErrors: the session collected too many 5xx replies.
	ReasonTooManyErrors
	// ReasonTooManyCommands: too many commands without a mail transaction.
	ReasonTooManyCommands
	// ReasonHeaderTooLarge: the message's header section is too large.
	ReasonHeaderTooLarge
	// ReasonTooManyConnections: the server is at its connection limit.
	ReasonTooManyConnections
	// ReasonTooManyFromClient: the client's address is at its limit.
	ReasonTooManyFromClient
	// ReasonStorageUnavailable: the queue's storage is known to be down.
	ReasonStorageUnavailable
)

func (r Reason) String() string {
	switch r {
	case ReasonBareLF:
		return "bare_lf"
	case ReasonBareCR:
		return "bare_cr"
	case ReasonLineTooLong:
		return "line_too_long"
	case ReasonTimeout:
		return "timeout"
	case ReasonTooManyErrors:
		return "too_many_errors"
	case ReasonTooManyCommands:
		return "too_many_commands"
	case ReasonHeaderTooLarge:
		return "header_too_large"
	case ReasonTooManyConnections:
		return "too_many_connections"
	case ReasonTooManyFromClient:
		return "too_many_from_client"
	case ReasonStorageUnavailable:
		return "storage_unavailable"
	}
	return "unknown"
}

// The replies of the guard, with their RFC 3463 enhanced codes. None of
// them says anything about our infrastructure.
var (
	// replySmuggling follows Postfix's smtpd_forbid_bare_newline: 521
	// (RFC 7504: the server does not accept mail from this client) and a
	// 5.5.2 syntax error, then the connection is closed.
	replySmuggling = &smtp.SMTPError{Code: 521, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Bare LF/CR not allowed (SMTP smuggling protection)"}
	// replySmugglingContent rejects one transaction whose content held a
	// bare CR or LF that the Conn did not see (see the package doc).
	replySmugglingContent = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Bare LF/CR not allowed (SMTP smuggling protection)"}
	// replyLineTooLong is RFC 5321 §4.5.3.1.6's reply.
	replyLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}
	// replyTimeout: RFC 3463 4.4.2 "bad connection".
	replyTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout exceeded, closing connection"}
	// replyTooManyErrors and replyTooManyCommands: RFC 3463 4.7.0, a
	// security policy refusal, as Postfix answers at its error and junk
	// command limits.
	replyTooManyErrors   = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many errors, closing connection"}
	replyTooManyCommands = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many commands without a mail transaction, closing connection"}
	// replyHeaderTooLarge: 552 5.3.4, "message too big for system": the
	// header section is a part of the message over a system limit.
	replyHeaderTooLarge = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message header section too large"}
	// Connection limits: 421 4.7.0, try again later.
	replyTooManyConnections = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections, try again later"}
	replyTooManyFromClient  = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections from your address, try again later"}
	// replyStorageUnavailable: RFC 3463 4.3.2 "system not accepting
	// network messages".
	replyStorageUnavailable = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service temporarily unavailable, try again later"}
)

func (r Reason) reply() *smtp.SMTPError {
	switch r {
	case ReasonBareLF, ReasonBareCR:
		return replySmuggling
	case ReasonLineTooLong:
		return replyLineTooLong
	case ReasonTimeout:
		return replyTimeout
	case ReasonTooManyErrors:
		return replyTooManyErrors
	case ReasonTooManyCommands:
		return replyTooManyCommands
	case ReasonHeaderTooLarge:
		return replyHeaderTooLarge
	case ReasonTooManyConnections:
		return replyTooManyConnections
	case ReasonTooManyFromClient:
		return replyTooManyFromClient
	}
	return replyStorageUnavailable
}

// ErrRejected is matched (errors.Is) by every error the guard returns from
// a connection it refused, and by Violation.
var ErrRejected = errors.New("guard: connection refused")

// Violation is the error a Conn returns from Read, and a content Reader
// from Read, once the client broke a rule. The Conn has already answered
// the client and closed the connection; a content Reader leaves the answer
// to its caller, which should give Reply().
type Violation struct {
	Reason Reason
	// Content is set when a content Reader found the violation (the
	// connection is still open).
	Content bool
}

func (v *Violation) Error() string {
	return fmt.Sprintf("guard: client refused: %s", v.Reason)
}

// Is makes a Violation match ErrRejected, and, when the Conn closed the
// connection, net.ErrClosed: go-smtp then ends the session quietly instead
// of answering again.
func (v *Violation) Is(target error) bool {
	return target == ErrRejected || (!v.Content && target == net.ErrClosed)
}

// As lets errors.As find the violation's reply as an *smtp.SMTPError, so
// that code mapping read errors to replies needs no knowledge of the guard.
func (v *Violation) As(target any) bool {
	if p, ok := target.(**smtp.SMTPError); ok {
		*p = v.Reply()
		return true
	}
	return false
}

// Reply is the SMTP reply for the violation.
func (v *Violation) Reply() *smtp.SMTPError {
	if v.Content && (v.Reason == ReasonBareCR || v.Reason == ReasonBareLF) {
		return replySmugglingContent
	}
	return v.Reason.reply()
}
