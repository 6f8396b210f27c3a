// Package policy decides which upstream request a Kilo session capability may be redeemed for, and with which
// credential. It is a pure function of (request URL, method, the capability's targets, the bound kiloSessionId,
// an optional bootstrap session id) plus operator-configured backend deny rules.
//
// The URL is parsed by hand, on its escaped form. net/url and http.ServeMux are deliberately not used for the
// decision: url.Parse accepts dot segments, ';' parameters, empty segments, "%2e", non-ASCII hosts, empty ports
// and IPv6 zone ids, and ServeMux decodes "%2F" inside path values. Every one of those is a way for the text the
// policy looked at to differ from the resource an upstream router ends up serving. Percent-decoding happens only
// inside the traversal guard (DESIGN §4 rule 2); every comparison is done on the escaped path, and the escaped
// bytes are what gets forwarded.
//
// Refusals carry a stable Reason (invalid_upstream_url or upstream_not_allowed) and a short machine-readable
// Detail naming the rule that fired (the Detail* constants). Neither ever echoes the URL, its query or a token.
package policy
