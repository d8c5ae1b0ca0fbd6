package tbtest

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// window is one "capacity:seconds" bandwidth of a token bucket with greedy
// (continuous) refill, as bucket4j's Bandwidth.simple used by ThingsBoard.
type window struct {
	capacity float64
	perSec   float64
	tokens   float64
	last     time.Time
}

// limiter is one ThingsBoard rate limit: several windows that must all allow
// a consumption (all-or-nothing). A nil limiter is unlimited.
type limiter struct {
	windows []*window
}

// parseLimit parses "cap:sec,cap:sec"; "" means unlimited (nil).
func parseLimit(spec string, now time.Time) (*limiter, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, nil
	}
	l := &limiter{}
	for _, part := range strings.Split(spec, ",") {
		c, s, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			return nil, fmt.Errorf("tbtest: rate limit %q: want capacity:seconds", spec)
		}
		capacity, err1 := strconv.ParseInt(strings.TrimSpace(c), 10, 64)
		secs, err2 := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err1 != nil || err2 != nil || capacity <= 0 || secs <= 0 {
			return nil, fmt.Errorf("tbtest: rate limit %q: want positive integers capacity:seconds", spec)
		}
		l.windows = append(l.windows, &window{
			capacity: float64(capacity),
			perSec:   float64(capacity) / float64(secs),
			tokens:   float64(capacity),
			last:     now,
		})
	}
	return l, nil
}

// tryConsume takes n tokens from every window if all of them have n.
func (l *limiter) tryConsume(n int, now time.Time) bool {
	if l == nil || n <= 0 {
		return true
	}
	for _, w := range l.windows {
		if el := now.Sub(w.last).Seconds(); el > 0 {
			w.tokens = min(w.capacity, w.tokens+el*w.perSec)
			w.last = now
		}
	}
	for _, w := range l.windows {
		if w.tokens < float64(n) {
			return false
		}
	}
	for _, w := range l.windows {
		w.tokens -= float64(n)
	}
	return true
}

// bucket is the three limits of one ThingsBoard rate-limit entity.
type bucket struct {
	messages   *limiter
	telemetry  *limiter
	dataPoints *limiter
}

func newBucket(r RateLimits, now time.Time) (*bucket, error) {
	var b bucket
	var err error
	if b.messages, err = parseLimit(r.Messages, now); err != nil {
		return nil, err
	}
	if b.telemetry, err = parseLimit(r.TelemetryMessages, now); err != nil {
		return nil, err
	}
	if b.dataPoints, err = parseLimit(r.TelemetryDataPoints, now); err != nil {
		return nil, err
	}
	return &b, nil
}

// message consumes one regular message (no data points).
func (b *bucket) message(now time.Time) bool { return b.messages.tryConsume(1, now) }

// data consumes one telemetry message plus points data points.
func (b *bucket) data(points int, now time.Time) bool {
	if !b.telemetry.tryConsume(1, now) {
		return false
	}
	return b.dataPoints.tryConsume(points, now)
}

// validateLimits reports a malformed limit string.
func validateLimits(r RateLimits) error {
	_, err := newBucket(r, time.Now())
	return err
}

// sessionLimitsJSON renders the getSessionLimits answer (WIRE §5.3).
func sessionLimitsJSON(l SessionLimits) []byte {
	limits := func(r RateLimits) []byte {
		var o objWriter
		for _, kv := range [][2]string{{"messages", r.Messages}, {"telemetryMessages", r.TelemetryMessages}, {"telemetryDataPoints", r.TelemetryDataPoints}} {
			if kv[1] == "" {
				o.raw(kv[0], []byte("null"))
			} else {
				o.raw(kv[0], jsonString(kv[1]))
			}
		}
		return o.bytes()
	}
	var o objWriter
	o.raw("maxPayloadSize", []byte(strconv.Itoa(l.MaxPayloadSize)))
	o.raw("maxInflightMessages", []byte(strconv.Itoa(l.MaxInflightMessages)))
	o.raw("rateLimits", limits(l.RateLimits))
	o.raw("gatewayRateLimits", limits(l.GatewayRateLimits))
	return o.bytes()
}
