// Package tbotel exports a tbgateway.Gateway's Stats as OpenTelemetry
// metrics.
//
// It is a module of its own (github.com/thingsgate/tbgateway/plugin/tbotel),
// so the core module never depends on OpenTelemetry.
//
// Register creates observable instruments on a MeterProvider's meter
// "github.com/thingsgate/tbgateway/plugin/tbotel" and one callback that
// takes a single Gateway.Stats snapshot per collection (cheap, it never
// blocks for long) and observes every instrument from it:
//
//	unregister, err := tbotel.Register(g, meterProvider)
//	if err != nil { ... }
//	defer unregister()
//
// With a nil MeterProvider the global one (otel.GetMeterProvider) is used.
// The instruments, under the namespace "tbgateway" (see WithNamespace):
//
//   - every uint64 counter of Stats as an Int64ObservableCounter named after
//     its field in snake_case: tbgateway.accepted, tbgateway.published,
//     tbgateway.acknowledged, tbgateway.data_points, tbgateway.resent,
//     tbgateway.restored, tbgateway.unrestorable, tbgateway.refused,
//     tbgateway.dropped, tbgateway.expired, tbgateway.salvaged,
//     tbgateway.lost_on_disk, tbgateway.poisoned, tbgateway.isolated,
//     tbgateway.publish_errors, tbgateway.received, tbgateway.malformed,
//     tbgateway.echoes, tbgateway.handler_dropped, tbgateway.duplicate_rpcs,
//     tbgateway.handler_panics, tbgateway.reconnects, tbgateway.half_open,
//     tbgateway.announced, tbgateway.refreshed and tbgateway.limits_applied
//     (cumulative since Dial);
//   - the Int64ObservableGauges tbgateway.queue_depth_records
//     (Stats.Queued), tbgateway.queue_depth_bytes (Stats.QueuedBytes, unit
//     By) and tbgateway.in_flight_messages (Stats.InFlight);
//   - tbgateway.connection_state, an Int64ObservableGauge observed three
//     times, with the attribute state "up", "down" or "reconnecting": 1 for
//     the current state, 0 for the others (all 0 in a state outside these).
//     The same shape as tbprom's: a query need not know the enum's numbers;
//   - the acknowledgement latency (Stats.AckLatency). OpenTelemetry has no
//     observable histogram, and the gateway keeps bucket counts, not the
//     observations a synchronous Float64Histogram would need (recording
//     deltas from the callback would also count twice with two readers). So
//     it is exported as Prometheus lays out a histogram, with cumulative
//     observable counters: tbgateway.ack_latency.count (observations),
//     tbgateway.ack_latency.sum (their total, a Float64ObservableCounter in
//     seconds, unit s) and tbgateway.ack_latency.bucket, observed once per
//     bucket of tbgateway.AckLatencyBounds() with the attribute le, the
//     bucket's upper bound in seconds ("0.001", "0.0025", ..., "10", "+Inf"),
//     valued by the observations at or below that bound. The count equals
//     the le="+Inf" bucket. A backend computes quantiles from the bucket
//     rates as from a Prometheus histogram.
//
// The names and descriptions come from tbgateway.StatsMetrics, the table
// every exporter shares.
// There are no per-device attributes: a gateway may serve thousands of
// devices, and the Stats counters are gateway-wide. WithAttributes adds
// fixed attributes to every observation, such as the gateway's name, to
// tell gateways apart.
package tbotel

import (
	"context"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/thingsgate/tbgateway"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the name of the meter Register creates its instruments on.
const ScopeName = "github.com/thingsgate/tbgateway/plugin/tbotel"

// metrics splits tbgateway.StatsMetrics, the table every exporter shares,
// into counters and gauges.
func metrics() (counters, gauges []tbgateway.StatsMetric) {
	for _, m := range tbgateway.StatsMetrics() {
		if m.Gauge {
			gauges = append(gauges, m)
		} else {
			counters = append(counters, m)
		}
	}
	return counters, gauges
}

// states are the values of connection_state's attribute state, in order.
var states = []struct {
	state tbgateway.ConnectionState
	label string
}{
	{tbgateway.StateUp, "up"},
	{tbgateway.StateDown, "down"},
	{tbgateway.StateReconnecting, "reconnecting"},
}

// Option configures Register.
type Option func(*config)

type config struct {
	namespace string
	attrs     []attribute.KeyValue
}

// WithNamespace sets the first part of the instruments' names, before a dot
// (default "tbgateway"). An empty namespace leaves it out.
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithAttributes adds fixed attributes to every observation, such as
// attribute.String("gateway", "line-3"). Several calls add up.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(c *config) { c.attrs = append(c.attrs, attrs...) }
}

// Register creates the instruments the package documentation lists on mp's
// meter ScopeName (the global MeterProvider if mp is nil), and a callback
// that observes them from one g.Stats snapshot per collection. unregister
// removes the callback: the instruments then report nothing. Registering
// one gateway twice, or two gateways with the same attributes, on one
// MeterProvider reports each series twice; give each gateway its own
// attributes.
func Register(g *tbgateway.Gateway, mp metric.MeterProvider, opts ...Option) (unregister func() error, err error) {
	cfg := config{namespace: "tbgateway"}
	for _, o := range opts {
		o(&cfg)
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(ScopeName)
	name := func(n string) string {
		if cfg.namespace == "" {
			return n
		}
		return cfg.namespace + "." + n
	}
	with := func(extra ...attribute.KeyValue) metric.MeasurementOption {
		kv := append(append([]attribute.KeyValue(nil), cfg.attrs...), extra...)
		return metric.WithAttributeSet(attribute.NewSet(kv...))
	}
	base := with()

	var insts []metric.Observable
	counters, gauges := metrics()
	cs := make([]metric.Int64ObservableCounter, len(counters))
	for i, c := range counters {
		if cs[i], err = meter.Int64ObservableCounter(name(c.Name), metric.WithDescription(c.Help)); err != nil {
			return nil, err
		}
		insts = append(insts, cs[i])
	}
	gs := make([]metric.Int64ObservableGauge, len(gauges))
	for i, m := range gauges {
		gopts := []metric.Int64ObservableGaugeOption{metric.WithDescription(m.Help)}
		if m.Unit != "" {
			gopts = append(gopts, metric.WithUnit(m.Unit))
		}
		if gs[i], err = meter.Int64ObservableGauge(name(m.Name), gopts...); err != nil {
			return nil, err
		}
		insts = append(insts, gs[i])
	}
	state, err := meter.Int64ObservableGauge(name("connection_state"),
		metric.WithDescription("The connection's state: 1 for the current state, 0 for the others."))
	if err != nil {
		return nil, err
	}
	stateOpts := make([]metric.MeasurementOption, len(states))
	for i, st := range states {
		stateOpts[i] = with(attribute.String("state", st.label))
	}
	const latencyDesc = "from handing a message to the MQTT connection to its acknowledgement"
	latCount, err := meter.Int64ObservableCounter(name("ack_latency.count"),
		metric.WithDescription("Acknowledgements timed: the observations of the latency "+latencyDesc+"."))
	if err != nil {
		return nil, err
	}
	latSum, err := meter.Float64ObservableCounter(name("ack_latency.sum"), metric.WithUnit("s"),
		metric.WithDescription("Total latency "+latencyDesc+"."))
	if err != nil {
		return nil, err
	}
	latBucket, err := meter.Int64ObservableCounter(name("ack_latency.bucket"),
		metric.WithDescription("Observations of the latency "+latencyDesc+" at or below the bound le, in seconds (cumulative buckets)."))
	if err != nil {
		return nil, err
	}
	insts = append(insts, state, latCount, latSum, latBucket)
	// The bucket attributes for tbgateway.AckLatencyBounds(); a snapshot with
	// other bounds gets its own.
	bounds := tbgateway.AckLatencyBounds()
	bucketOpts := leOptions(bounds, with)

	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := g.Stats()
		for i, c := range counters {
			o.ObserveInt64(cs[i], clamp(c.Value(&s)), base)
		}
		for i, m := range gauges {
			o.ObserveInt64(gs[i], clamp(m.Value(&s)), base)
		}
		for i, st := range states {
			v := int64(0)
			if s.State == st.state {
				v = 1
			}
			o.ObserveInt64(state, v, stateOpts[i])
		}
		h := s.AckLatency
		opts := bucketOpts
		if !slices.Equal(h.Bounds, bounds) {
			opts = leOptions(h.Bounds, with)
		}
		cum := cumulative(h)
		for i, n := range cum {
			o.ObserveInt64(latBucket, clamp(n), opts[i])
		}
		o.ObserveInt64(latCount, clamp(cum[len(cum)-1]), base)
		o.ObserveFloat64(latSum, h.Sum.Seconds(), base)
		return nil
	}, insts...)
	if err != nil {
		return nil, err
	}
	return reg.Unregister, nil
}

// cumulative returns h's cumulative bucket counts, one per bound and a last
// one for +Inf that counts every observation.
func cumulative(h tbgateway.Histogram) []uint64 {
	out := make([]uint64, len(h.Bounds)+1)
	var n uint64
	for i := range h.Bounds {
		if i < len(h.Counts) {
			n += h.Counts[i]
		}
		out[i] = n
	}
	for i := len(h.Bounds); i < len(h.Counts); i++ {
		n += h.Counts[i]
	}
	out[len(h.Bounds)] = n
	return out
}

// leOptions returns the measurement options with attribute le for each
// bound, in seconds, and a last one for +Inf.
func leOptions(bounds []time.Duration, with func(...attribute.KeyValue) metric.MeasurementOption) []metric.MeasurementOption {
	out := make([]metric.MeasurementOption, 0, len(bounds)+1)
	for _, b := range bounds {
		out = append(out, with(attribute.String("le", strconv.FormatFloat(b.Seconds(), 'g', -1, 64))))
	}
	return append(out, with(attribute.String("le", "+Inf")))
}

func clamp(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}
