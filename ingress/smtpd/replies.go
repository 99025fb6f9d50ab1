package smtpd

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/ingress/address"
)

// The replies the ingress gives, with their RFC 3463 enhanced codes. Every
// error a Session method returns is one of these: go-smtp writes any other
// error's text to the client (and, from Data, as a permanent 554), which
// would both leak internals and turn our temporary problems into bounces.
var (
	// errStorage is the answer when JetStream is unavailable or full: a
	// temporary failure of our own system (RFC 3463 4.3.0), worded so that
	// nothing about the infrastructure reaches the client.
	errStorage = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure storing the message, please try again later"}
	// errShuttingDown refuses new transactions while the server drains.
	errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down, please try again later"}
	// errRelayDenied is Postfix's wording of the open-relay refusal.
	errRelayDenied = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay access denied"}
	// errTooManyRecipients is RFC 5321 §4.5.3.1.10's reply; the client
	// sends the remaining recipients in another transaction.
	errTooManyRecipients = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	// errLineTooLong is RFC 5321 §4.5.3.1.6's reply.
	errLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}
	// errNoTransaction answers a DATA that go-smtp let through without an
	// envelope, which should not happen.
	errNoTransaction = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Bad sequence of commands"}
)

// queued is the 250 reply. It is returned from Data as an *smtp.SMTPError
// because go-smtp's own success text cannot carry the queue id.
func queued(qid string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + qid}
}

// badAddress turns an address.Parse error into a reply. RFC 3463 gives the
// recipient 5.1.3 (bad destination mailbox address syntax) and the sender
// 5.1.7 (bad sender's mailbox address syntax); non-ASCII without SMTPUTF8
// is 553 5.6.7 (RFC 6531 §3.5).
func badAddress(err error, sender bool) *smtp.SMTPError {
	who, ec := "Recipient", smtp.EnhancedCode{5, 1, 3}
	if sender {
		who, ec = "Sender", smtp.EnhancedCode{5, 1, 7}
	}
	switch {
	case errors.Is(err, address.ErrNonASCII):
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: who + " address is not ASCII; use MAIL FROM ... SMTPUTF8"}
	case errors.Is(err, address.ErrUnqualified):
		return &smtp.SMTPError{Code: 501, EnhancedCode: ec, Message: who + " address must be fully qualified, like user@example.com"}
	default:
		return &smtp.SMTPError{Code: 501, EnhancedCode: ec, Message: fmt.Sprintf("%s address is malformed", who)}
	}
}
