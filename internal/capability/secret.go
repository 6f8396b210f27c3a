package capability

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
)

const redacted = "[REDACTED]"

// Secret holds a raw token. Every way Go formats or serialises a value — String, GoString, fmt with any verb
// (including %x and %q, which would otherwise dump the bytes), slog, encoding/json and encoding.TextMarshaler —
// yields "[REDACTED]". Only an explicit string(s) or s.Reveal() gives the token, so a Secret that ends up in a
// log line, an error or an event by accident leaks nothing.
type Secret string

// Reveal returns the raw token. Call it only where the token is about to be used (an Authorization header).
func (s Secret) Reveal() string { return string(s) }

func (Secret) String() string   { return redacted }
func (Secret) GoString() string { return `capability.Secret("` + redacted + `")` }

// Format implements fmt.Formatter so that no verb or flag can reach the underlying string.
func (s Secret) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = f.Write([]byte(s.GoString()))
	case verb == 'q':
		_, _ = f.Write([]byte(strconv.Quote(redacted)))
	default:
		_, _ = f.Write([]byte(redacted))
	}
}

func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (s Secret) presence() string {
	if s == "" {
		return "<absent>"
	}
	return redacted
}

// String renders the subject with its tokens redacted.
func (s Subject) String() string {
	var b strings.Builder
	b.WriteString("capability.Subject{")
	s.writeFields(&b)
	b.WriteByte('}')
	return b.String()
}

func (s *Subject) writeFields(b *strings.Builder) {
	fmt.Fprintf(b, "userId:%q cloudAgentSessionId:%q kiloSessionId:%q outboundContainerId:%q userToken:%s providerToken:%s targets:{backendBaseUrl:%q providerBaseUrl:%q sessionIngestBaseUrl:%q}",
		s.UserID, s.CloudAgentSessionID, s.KiloSessionID, s.OutboundContainerID,
		s.UserToken.presence(), s.ProviderToken.presence(),
		s.Targets.BackendBaseURL, s.Targets.ProviderBaseURL, s.Targets.SessionIngestBaseURL)
}

// Format implements fmt.Formatter: every verb prints String, so %#v cannot bypass the redaction.
func (s Subject) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// LogValue renders the subject for slog with its tokens redacted.
func (s Subject) LogValue() slog.Value { return slog.GroupValue(s.logAttrs()...) }

func (s *Subject) logAttrs() []slog.Attr {
	return []slog.Attr{
		slog.String("userId", s.UserID),
		slog.String("cloudAgentSessionId", s.CloudAgentSessionID),
		slog.String("kiloSessionId", s.KiloSessionID),
		slog.String("outboundContainerId", s.OutboundContainerID),
		slog.String("userToken", s.UserToken.presence()),
		slog.String("providerToken", s.ProviderToken.presence()),
		slog.Group("targets",
			slog.String("backendBaseUrl", s.Targets.BackendBaseURL),
			slog.String("providerBaseUrl", s.Targets.ProviderBaseURL),
			slog.String("sessionIngestBaseUrl", s.Targets.SessionIngestBaseURL)),
	}
}

// MarshalJSON renders the subject with the wire field names and its tokens redacted.
func (s Subject) MarshalJSON() ([]byte, error) {
	c := Claims{Subject: s}
	return c.appendJSON(nil, false, false), nil
}

// String renders the claims with their tokens redacted.
func (c Claims) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "capability.Claims{version:%d purpose:%q ", c.Version, c.Purpose)
	c.Subject.writeFields(&b)
	fmt.Fprintf(&b, " issuedAt:%d expiresAt:%d}", c.IssuedAt, c.ExpiresAt)
	return b.String()
}

// Format implements fmt.Formatter: every verb prints String, so %#v cannot bypass the redaction.
func (c Claims) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// LogValue renders the claims for slog with their tokens redacted.
func (c Claims) LogValue() slog.Value {
	attrs := append([]slog.Attr{slog.Int("version", c.Version), slog.String("purpose", c.Purpose)}, c.Subject.logAttrs()...)
	attrs = append(attrs, slog.Int64("issuedAt", c.IssuedAt), slog.Int64("expiresAt", c.ExpiresAt))
	return slog.GroupValue(attrs...)
}

// MarshalJSON renders the claims in the wire field order with userToken and providerToken as "[REDACTED]". Use
// Plaintext for the unredacted form.
func (c Claims) MarshalJSON() ([]byte, error) { return c.appendJSON(nil, false, true), nil }

// Plaintext returns the exact compact JSON that a token carrying these claims seals, tokens included. It is the
// one deliberate way to see the secrets (kubectl-kilo capability decode --show-secrets); never log it.
func (c *Claims) Plaintext() []byte { return c.appendJSON(nil, true, true) }
