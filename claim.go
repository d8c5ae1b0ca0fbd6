package tbgateway

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/outbox"
)

const topicGatewayClaim = "v1/gateway/claim"

// ClaimRequest lets a ThingsBoard customer claim a device with a secret
// during a limited time.
type ClaimRequest struct {
	// SecretKey the customer must enter; "" is allowed.
	SecretKey string
	// Duration of the claiming window, rounded up to whole milliseconds;
	// zero uses the server's default (security.claim.duration, one day).
	Duration time.Duration
}

// Claim opens claiming windows for several devices in one
// v1/gateway/claim message. The server answers only with the PUBACK; it
// blocks until then (QoS 1) or ctx ends.
func (g *Gateway) Claim(ctx context.Context, claims map[string]ClaimRequest) error {
	recs, err := g.claimRecords(claims)
	if err != nil {
		return err
	}
	return g.send(ctx, recs)
}

func (g *Gateway) claimRecords(claims map[string]ClaimRequest) ([]*outbox.Record, error) {
	e := getEncoder()
	defer e.release()
	if err := e.claims(claims); err != nil {
		return nil, err
	}
	return g.out.whole(&outbox.Record{Topic: topicGatewayClaim, Body: e.payload()})
}

// claims writes {"device":{"secretKey":..,"durationMs":..},...}.
func (e *encoder) claims(claims map[string]ClaimRequest) error {
	if len(claims) == 0 {
		return fmt.Errorf("%w: no device", ErrNoData)
	}
	e.names = sortedNames(e.names, claims)
	e.buf = append(e.buf, '{')
	for i, name := range e.names {
		if err := checkDeviceName(name); err != nil {
			return err
		}
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = jsonx.AppendString(e.buf, name)
		e.buf = append(e.buf, ':')
		var err error
		if e.buf, err = appendClaim(e.buf, name, claims[name]); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

// appendClaim writes {"secretKey":..,"durationMs":..}, leaving out members
// at their defaults as the server fills them in.
func appendClaim(b []byte, device string, c ClaimRequest) ([]byte, error) {
	if c.Duration < 0 {
		return b, &ValueError{Device: device, Key: "durationMs", Err: fmt.Errorf("%w: negative claim duration", ErrInvalidValue)}
	}
	b = append(b, '{')
	if c.SecretKey != "" {
		b = append(b, `"secretKey":`...)
		b = jsonx.AppendString(b, c.SecretKey)
	}
	if c.Duration > 0 {
		if c.SecretKey != "" {
			b = append(b, ',')
		}
		ms := (c.Duration + time.Millisecond - 1) / time.Millisecond
		b = append(b, `"durationMs":`...)
		b = strconv.AppendInt(b, int64(ms), 10)
	}
	return append(b, '}'), nil
}
