package ratelimit

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxSeconds keeps a window's period representable as a time.Duration.
const maxSeconds = math.MaxInt64 / int64(time.Second)

// Window is one "capacity:seconds" term of a limit: a token bucket holding at
// most Capacity units that refills at Capacity/Seconds units per second.
type Window struct {
	Capacity int
	Seconds  int
}

// String renders the window in ThingsBoard's "capacity:seconds" form.
func (w Window) String() string { return strconv.Itoa(w.Capacity) + ":" + strconv.Itoa(w.Seconds) }

// Limit is one server rate limit: every window applies at once. The zero
// Limit is unlimited, as is a null or empty setting on the server.
type Limit struct {
	windows []Window
}

// Parse reads ThingsBoard's "cap:sec[,cap:sec...]" syntax, tolerating
// whitespace around every number. An empty or blank spec is unlimited; any
// other malformed spec is an error, because silently ignoring a limit the
// server enforces would get the connection closed.
func Parse(spec string) (Limit, error) {
	if strings.TrimSpace(spec) == "" {
		return Limit{}, nil
	}
	parts := strings.Split(spec, ",")
	ws := make([]Window, 0, len(parts))
	for _, p := range parts {
		c, s, ok := strings.Cut(p, ":")
		if !ok {
			return Limit{}, fmt.Errorf("ratelimit: invalid limit %q: window %q is not capacity:seconds", spec, strings.TrimSpace(p))
		}
		capacity, err := positive(c)
		if err != nil {
			return Limit{}, fmt.Errorf("ratelimit: invalid limit %q: capacity: %w", spec, err)
		}
		seconds, err := positive(s)
		if err != nil {
			return Limit{}, fmt.Errorf("ratelimit: invalid limit %q: seconds: %w", spec, err)
		}
		if int64(seconds) > maxSeconds {
			return Limit{}, fmt.Errorf("ratelimit: invalid limit %q: period of %d seconds is too long", spec, seconds)
		}
		ws = append(ws, Window{Capacity: capacity, Seconds: seconds})
	}
	return Limit{windows: ws}, nil
}

// positive parses a strictly positive decimal integer surrounded by optional
// whitespace.
func positive(s string) (int, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not an integer", s)
	}
	if n <= 0 {
		return 0, fmt.Errorf("%d is not positive", n)
	}
	return n, nil
}

// Windows returns a copy of the limit's windows in their configured order
// (nil when unlimited).
func (l Limit) Windows() []Window { return slices.Clone(l.windows) }

// Unlimited reports whether the limit admits everything.
func (l Limit) Unlimited() bool { return len(l.windows) == 0 }

// String renders the limit in canonical "cap:sec,cap:sec" form; unlimited is "".
func (l Limit) String() string {
	var sb strings.Builder
	for i, w := range l.windows {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(w.String())
	}
	return sb.String()
}

// equal reports whether both limits have the same windows in the same order.
func (l Limit) equal(o Limit) bool { return slices.Equal(l.windows, o.windows) }

// Kind names one of the three limits of a Bucket.
type Kind int

// The three limits ThingsBoard applies to every rate-limited entity.
const (
	// KindMessages counts every message that carries no data points
	// (connect, disconnect, attribute requests, RPC responses, claims, ...).
	KindMessages Kind = iota
	// KindTelemetryMessages counts messages that carry data points
	// (telemetry and attribute posts), one unit each.
	KindTelemetryMessages
	// KindTelemetryDataPoints counts the data points those messages carry.
	KindTelemetryDataPoints

	numKinds = 3
)

// String returns the getSessionLimits member name of the kind.
func (k Kind) String() string {
	switch k {
	case KindMessages:
		return "messages"
	case KindTelemetryMessages:
		return "telemetryMessages"
	case KindTelemetryDataPoints:
		return "telemetryDataPoints"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Limits are the three limits of one server bucket, as reported by the
// getSessionLimits RPC under "rateLimits" or "gatewayRateLimits".
type Limits struct {
	Messages            Limit
	TelemetryMessages   Limit
	TelemetryDataPoints Limit
}

// ParseLimits parses the three members of a getSessionLimits rate-limit
// object; pass "" for a JSON null.
func ParseLimits(messages, telemetryMessages, telemetryDataPoints string) (Limits, error) {
	var l Limits
	var err error
	if l.Messages, err = Parse(messages); err != nil {
		return Limits{}, fmt.Errorf("%s: %w", KindMessages, err)
	}
	if l.TelemetryMessages, err = Parse(telemetryMessages); err != nil {
		return Limits{}, fmt.Errorf("%s: %w", KindTelemetryMessages, err)
	}
	if l.TelemetryDataPoints, err = Parse(telemetryDataPoints); err != nil {
		return Limits{}, fmt.Errorf("%s: %w", KindTelemetryDataPoints, err)
	}
	return l, nil
}

// Unlimited reports whether none of the three limits restricts anything.
func (l Limits) Unlimited() bool {
	return l.Messages.Unlimited() && l.TelemetryMessages.Unlimited() && l.TelemetryDataPoints.Unlimited()
}

// get returns the limit of kind k.
func (l Limits) get(k Kind) Limit {
	switch k {
	case KindMessages:
		return l.Messages
	case KindTelemetryMessages:
		return l.TelemetryMessages
	default:
		return l.TelemetryDataPoints
	}
}
