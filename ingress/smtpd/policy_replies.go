package smtpd

import "github.com/emersion/go-smtp"

// The replies of the listeners' policies (submission, AUTH, inbound MX),
// with their RFC 3463 enhanced codes. Like replies.go, every one is an
// *smtp.SMTPError so that go-smtp writes it unchanged.
var (
	// errAuthRequired: MAIL on a submission port before AUTH (RFC 4954 §6).
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	// errEncryptionRequired: AUTH on a clear connection (RFC 4954 §6);
	// the client must STARTTLS first. go-smtp's own "523 5.7.10" is not a
	// reply RFC 4954 defines.
	errEncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism"}
	// errAuthFailed: unknown user or wrong password (RFC 4954 §6), never
	// saying which.
	errAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	// errAuthMalformed: a SASL response that does not follow the mechanism
	// (RFC 4954 §4: 501 for a response that cannot be decoded).
	errAuthMalformed = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Cannot decode authentication response"}
	// errAuthInTransaction: RFC 4954 §4 forbids AUTH during a transaction.
	errAuthInTransaction = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "AUTH not permitted during a mail transaction"}
	// errAuthUnavailable: AUTH on the relay/MX port, which does not offer it.
	errAuthUnavailable = &smtp.SMTPError{Code: 502, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "AUTH not available on this port; use submission"}
	// errUnknownMechanism: RFC 4954 §4.
	errUnknownMechanism = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Unrecognized authentication type"}
	// errSenderNotOwned: an authenticated user's envelope sender outside
	// the user's domains (Postfix's reject_sender_login_mismatch).
	errSenderNotOwned = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender address rejected: not owned by the authenticated user"}
	// errUnknownUser: a recipient of an accepted domain that does not
	// exist, refused now rather than bounced later (RFC 3463 5.1.1).
	errUnknownUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "Recipient address rejected: User unknown"}
	// errRequireTLSClear: REQUIRETLS (RFC 8689) is only offered, and only
	// meaningful, on a TLS connection; 5.7.10 is "encryption needed".
	errRequireTLSClear = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 10}, Message: "REQUIRETLS needs a TLS connection; use STARTTLS first"}
	// errHelloAfterTLS: RFC 3207 §4.2, the client must greet again after
	// STARTTLS.
	errHelloAfterTLS = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Send EHLO again after STARTTLS"}
	// errBadPriority: a malformed or repeated RFC 6710 MT-PRIORITY.
	errBadPriority = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Malformed MT-PRIORITY parameter value"}
)
