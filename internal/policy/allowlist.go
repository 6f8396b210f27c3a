package policy

import (
	"slices"
	"strconv"
)

// DefaultAllowList are Kilo's production origins.
var DefaultAllowList = []string{"https://api.kilo.ai", "https://ingest.kilosessions.ai"}

// DetailPath is the TargetError detail for an allow-list entry that has a path.
const DetailPath = "path"

// AllowList is the cluster-wide set of upstream origins credentials may ever be sent to (DESIGN §5). A KiloSession
// cannot extend it. The zero value and a nil *AllowList allow nothing.
type AllowList struct {
	origins map[string]struct{}
}

// ParseAllowList parses origins like "https://api.kilo.ai". Each is validated like a target base URL and must
// have no path (a single "/" is tolerated); it is normalised the same way (lower-case, default port dropped), so
// "HTTPS://API.KILO.AI:443/" and "https://api.kilo.ai" are the same entry. The error is a *TargetError whose
// Field is "allowList[i]".
func ParseAllowList(origins []string) (*AllowList, error) {
	a := &AllowList{origins: make(map[string]struct{}, len(origins))}
	for i, o := range origins {
		field := "allowList[" + strconv.Itoa(i) + "]"
		t, err := parseBase(field, o)
		if err != nil {
			return nil, err
		}
		if t.base != "" {
			return nil, &TargetError{Field: field, Detail: DetailPath, Message: targetMessage(DetailPath)}
		}
		a.origins[t.origin] = struct{}{}
	}
	return a, nil
}

// Allows reports whether origin (as in Decision.Origin / ParsedTargets.Origins) is allowed: an exact match with a
// normalised entry. Origins come from this package already normalised, so no folding is done here.
func (a *AllowList) Allows(origin string) bool {
	if a == nil {
		return false
	}
	_, ok := a.origins[origin]
	return ok
}

// Origins returns the normalised entries, for logs and status messages (origins are not secret).
func (a *AllowList) Origins() []string {
	if a == nil {
		return nil
	}
	out := make([]string, 0, len(a.origins))
	for o := range a.origins {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}
