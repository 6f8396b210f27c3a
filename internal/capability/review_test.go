package capability

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// Claims returned by Decode share memory with the opened plaintext (unsafe.String). These tests pin the property
// that makes that safe: the backing buffer is private to one Decode call and never written again, so claims
// returned earlier stay exactly as they were whatever the codec does next, on any goroutine. Run them with -race.

func TestDecodedClaimsAreNotAliasedByLaterDecodes(t *testing.T) {
	now := time.UnixMilli(1_780_833_600_000)
	// Two keys, so both open paths (scratch for a non-last key, in place for the last key) are exercised.
	ring := mustRing(t, keyA, keyB)
	issuers := []*KeyRing{mustRing(t, keyA), mustRing(t, keyB)}
	type kept struct {
		c    *Claims
		want string
	}
	var all []kept
	for i := 0; i < 64; i++ {
		s := testSubject()
		s.UserID = fmt.Sprintf("user-%03d", i)
		s.UserToken = Secret(fmt.Sprintf("token-%03d-%s", i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"))
		if i%3 == 0 {
			s.KiloSessionID = fmt.Sprintf("escaped\\\"-%d-\u00e9", i) // forces the unescaping (copying) path
		}
		tok, _, err := Issue(issuers[i%2], s, now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := Decode(ring, tok, now)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, kept{c, snapshot(c)})
		// Decoding the same token again, failing decodes, and issuing must not disturb anything returned so far.
		if _, err := Decode(ring, tok, now); err != nil {
			t.Fatal(err)
		}
		_, _ = Decode(ring, tok[:len(tok)-4]+"AAA=", now)
		_, _ = Decode(mustRing(t, keyB), tok, now)
		for _, k := range all {
			if got := snapshot(k.c); got != k.want {
				t.Fatalf("claims changed after later codec calls:\n got %s\nwant %s", got, k.want)
			}
		}
	}
}

func TestConcurrentDecodesKeepTheirClaims(t *testing.T) {
	now := time.UnixMilli(1_780_833_600_000)
	ring := mustRing(t, keyB, keyA)
	var toks []string
	for i := 0; i < 8; i++ {
		s := testSubject()
		s.OutboundContainerID = fmt.Sprintf("pod-%d", i)
		tok, _, err := Issue(mustRing(t, [][]byte{keyA, keyB}[i%2]), s, now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var held []*Claims
			for n := 0; n < 200; n++ {
				i := (g + n) % len(toks)
				c, err := Decode(ring, toks[i], now)
				if err != nil {
					errs <- err
					return
				}
				if c.OutboundContainerID != fmt.Sprintf("pod-%d", i) {
					errs <- fmt.Errorf("token %d decoded to container %q", i, c.OutboundContainerID)
					return
				}
				held = append(held, c)
			}
			for n, c := range held {
				if want := fmt.Sprintf("pod-%d", (g+n)%len(toks)); c.OutboundContainerID != want || string(c.UserToken) != "raw-user-token" {
					errs <- fmt.Errorf("held claims %d changed to container %q", n, c.OutboundContainerID)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func snapshot(c *Claims) string {
	return fmt.Sprintf("%q|%q|%q|%q|%q|%q|%q|%+v|%d|%d", c.UserID, c.CloudAgentSessionID, c.KiloSessionID,
		c.OutboundContainerID, string(c.UserToken), string(c.ProviderToken), c.Purpose, c.Targets, c.IssuedAt, c.ExpiresAt)
}
