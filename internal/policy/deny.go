package policy

import (
	"fmt"
	"strings"
)

// DenyRule is one extra deny rule: a path pattern and optional methods.
//
// Path starts with "/" and is a list of segments; a segment is a literal or "*" (exactly one non-empty segment),
// and the last segment may be "**" (the path itself and everything below it). Literals may hold only letters,
// digits and - . _ ~ : those are the characters a request path cannot spell any other way (rule 3 refuses their
// percent-encodings), so a rule cannot be stepped around with "%3A" for ":". Matching is case-insensitive, on the
// escaped request path, and a request path with one trailing '/' matches as if it had none, because common
// routers (Express, Next.js) serve "/a/" and "/A" as "/a". Methods are compared case-insensitively; none means
// every method; GET implies HEAD, which those routers serve with the GET handler.
type DenyRule struct {
	Path    string
	Methods []string
}

// DenyRuleError reports a deny rule that does not compile. The pattern is operator configuration, not a secret.
type DenyRuleError struct {
	Index   int
	Path    string
	Message string
}

func (e *DenyRuleError) Error() string {
	return fmt.Sprintf("backend deny rule %d (path %q): %s", e.Index, e.Path, e.Message)
}

// maxDenyPathLength matches the KiloSession CRD's bound on a rule's path.
const maxDenyPathLength = 1024

type compiledRule struct {
	segs    []string // literal segments, or "*"
	subtree bool     // the pattern ended in "/**"
	methods []string // upper-case; empty means every method
}

// Policy carries operator-configured backend deny rules. A nil *Policy means no extra rules; the built-in
// credential-minting deny applies either way. Immutable after New and safe for concurrent use.
type Policy struct {
	rules []compiledRule
}

// New compiles deny rules; syntax errors (a *DenyRuleError) are reported here, never at request time.
// Operator-wide and per-KiloSession rules are simply concatenated.
func New(rules []DenyRule) (*Policy, error) {
	p := &Policy{rules: make([]compiledRule, 0, len(rules))}
	for i, r := range rules {
		c, msg := compileRule(r)
		if msg != "" {
			return nil, &DenyRuleError{Index: i, Path: r.Path, Message: msg}
		}
		p.rules = append(p.rules, c)
	}
	return p, nil
}

func compileRule(r DenyRule) (compiledRule, string) {
	var c compiledRule
	p := r.Path
	if !strings.HasPrefix(p, "/") {
		return c, "must start with /"
	}
	if len(p) > maxDenyPathLength {
		return c, fmt.Sprintf("must be at most %d characters", maxDenyPathLength)
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		last := i == len(segs)-1
		switch {
		case s == "":
			return c, "has an empty segment (// or a trailing /)"
		case s == "**":
			if !last {
				return c, `"**" may only be the last segment`
			}
			c.subtree = true
			continue
		case s == "*":
		case s == "." || s == "..":
			return c, `has a "." or ".." segment`
		case strings.Contains(s, "*"):
			return c, `"*" and "**" must be whole segments`
		case strings.ContainsAny(s, "%?#;\\"):
			return c, "must not contain '%', '?', '#', ';' or '\\' (rules match the escaped path; write letters, digits and - . _ ~ only)"
		default:
			for j := 0; j < len(s); j++ {
				if !isUnreserved(s[j]) {
					return c, "segments may hold only letters, digits and - . _ ~ (other characters could be percent-encoded past the rule)"
				}
			}
		}
		c.segs = append(c.segs, s)
	}
	hasGet, hasHead := false, false
	for _, m := range r.Methods {
		if !isToken(m) {
			return c, fmt.Sprintf("method %q is not an HTTP method token", m)
		}
		m = strings.ToUpper(m)
		hasGet = hasGet || m == "GET"
		hasHead = hasHead || m == "HEAD"
		c.methods = append(c.methods, m)
	}
	// A rule for GET also covers HEAD: Express, Next.js and Go's ServeMux answer HEAD by running the GET handler
	// (only the body is dropped), so the handler a GET rule denies would otherwise still run for a HEAD.
	if hasGet && !hasHead {
		c.methods = append(c.methods, "HEAD")
	}
	return c, ""
}

// isToken: RFC 9110 §5.6.2 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlpha(c) || isDigit(c) {
			continue
		}
		switch c {
		case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
			continue
		}
		return false
	}
	return true
}

// denied reports whether any rule matches the escaped path and method.
func (p *Policy) denied(path, method string) bool {
	if p == nil {
		return false
	}
	for i := range p.rules {
		if p.rules[i].matches(path, method) {
			return true
		}
	}
	return false
}

func (r *compiledRule) matches(path, method string) bool {
	if len(r.methods) > 0 {
		if method == "" {
			method = "GET"
		}
		ok := false
		for _, m := range r.methods {
			if strings.EqualFold(m, method) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	rest := path
	if len(rest) > 1 && rest[len(rest)-1] == '/' {
		rest = rest[:len(rest)-1]
	}
	for _, seg := range r.segs {
		if len(rest) == 0 || rest[0] != '/' {
			return false
		}
		rest = rest[1:]
		n := strings.IndexByte(rest, '/')
		if n < 0 {
			n = len(rest)
		}
		s := rest[:n]
		if s == "" || (seg != "*" && !strings.EqualFold(s, seg)) {
			return false
		}
		rest = rest[n:]
	}
	// After the literal segments, rest is "" (the path itself) or "/…" (below it).
	return r.subtree || rest == ""
}
