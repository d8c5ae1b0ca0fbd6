// Package tbprom exports a tbgateway.Gateway's Stats as Prometheus metrics.
//
// It is a module of its own (github.com/thingsgate/tbgateway/plugin/tbprom),
// so the core module never depends on the Prometheus client.
//
// Register a Collector for a gateway:
//
//	g, err := tbgateway.Dial(ctx, broker, tbgateway.WithAccessToken(token))
//	...
//	prometheus.MustRegister(tbprom.NewCollector(g))
//	http.Handle("/metrics", promhttp.Handler())
//
// On each scrape the Collector takes one Gateway.Stats snapshot (cheap, it
// never blocks for long) and emits, under the namespace "tbgateway" (see
// WithNamespace and WithSubsystem):
//
//   - every uint64 counter of Stats as a counter named after its field in
//     snake_case with the suffix _total: tbgateway_accepted_total,
//     tbgateway_published_total, tbgateway_acknowledged_total,
//     tbgateway_data_points_total, tbgateway_resent_total,
//     tbgateway_restored_total, tbgateway_unrestorable_total,
//     tbgateway_refused_total, tbgateway_dropped_total,
//     tbgateway_expired_total, tbgateway_salvaged_total,
//     tbgateway_lost_on_disk_total, tbgateway_poisoned_total,
//     tbgateway_isolated_total, tbgateway_publish_errors_total,
//     tbgateway_received_total, tbgateway_malformed_total,
//     tbgateway_echoes_total, tbgateway_handler_dropped_total,
//     tbgateway_duplicate_rpcs_total, tbgateway_handler_panics_total,
//     tbgateway_reconnects_total, tbgateway_half_open_total,
//     tbgateway_announced_total, tbgateway_refreshed_total and
//     tbgateway_limits_applied_total (the counters start at zero at Dial);
//   - the gauges tbgateway_queue_depth_records (Stats.Queued),
//     tbgateway_queue_depth_bytes (Stats.QueuedBytes) and
//     tbgateway_in_flight_messages (Stats.InFlight);
//   - tbgateway_connection_state, one gauge per state with the label state
//     "up", "down" or "reconnecting": 1 for the current state, 0 for the
//     others (all three are 0 in a state outside these, such as before the
//     first connection). This shape, rather than one gauge valued by the
//     ConnectionState enum, lets a query or an alert say
//     tbgateway_connection_state{state="up"} == 0 without knowing the
//     enum's numbers, and sum over many gateways;
//   - tbgateway_ack_latency_seconds, a histogram of Stats.AckLatency (the
//     time from handing a message to the MQTT connection to its
//     acknowledgement), with the buckets of tbgateway.AckLatencyBounds in
//     seconds. Its count is the sum of the bucket counts, so that the
//     buckets and the count of a scrape always agree.
//
// The help text of each metric is the doc comment of its Stats field.
// There are no per-device labels: a gateway may serve thousands of devices,
// and the Stats counters are gateway-wide. To tell gateways apart (and to
// register more than one gateway's Collector in one registry) give each a
// constant label:
//
//	prometheus.MustRegister(tbprom.NewCollector(g,
//		tbprom.WithConstLabels(prometheus.Labels{"gateway": "line-3"})))
package tbprom

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/thingsgate/tbgateway"
)

// counter is one uint64 field of tbgateway.Stats exported as a counter.
type counter struct {
	Field string // the Stats field
	Name  string // the metric's name without namespace and subsystem; ends in _total
	Help  string
	Value func(*tbgateway.Stats) uint64
}

// gauge is one int field of tbgateway.Stats exported as a gauge.
type gauge struct {
	Field string // the Stats field
	Name  string // the metric's name without namespace and subsystem
	Help  string
	Value func(*tbgateway.Stats) int
}

// counters lists the counters a Collector exports, in order: the table the
// package documentation spells out. A test fails when a uint64 field of
// Stats is missing here.
var counters = []counter{
	{"Accepted", "accepted_total", "Records accepted into the queue.", func(s *tbgateway.Stats) uint64 { return s.Accepted }},
	{"Published", "published_total", "Messages handed to the MQTT connection.", func(s *tbgateway.Stats) uint64 { return s.Published }},
	{"Acknowledged", "acknowledged_total", "Messages confirmed (PUBACK at QoS 1, written at QoS 0).", func(s *tbgateway.Stats) uint64 { return s.Acknowledged }},
	{"DataPoints", "data_points_total", "Data points in acknowledged messages.", func(s *tbgateway.Stats) uint64 { return s.DataPoints }},
	{"Resent", "resent_total", "Messages taken back from a lost connection to send again (possible duplicates at the server).", func(s *tbgateway.Stats) uint64 { return s.Resent }},
	{"Restored", "restored_total", "Records loaded from the queue store at Dial (possible duplicates).", func(s *tbgateway.Stats) uint64 { return s.Restored }},
	{"Unrestorable", "unrestorable_total", "Records the queue store returned at Dial that could not be decoded, dropped.", func(s *tbgateway.Stats) uint64 { return s.Unrestorable }},
	{"Refused", "refused_total", "Calls refused because the queue (or the callback lane) was full.", func(s *tbgateway.Stats) uint64 { return s.Refused }},
	{"Dropped", "dropped_total", "Records evicted by OverflowDropOldest.", func(s *tbgateway.Stats) uint64 { return s.Dropped }},
	{"Expired", "expired_total", "Records dropped for waiting longer than WithMaxAge.", func(s *tbgateway.Stats) uint64 { return s.Expired }},
	{"Salvaged", "salvaged_total", "Records the queue store salvaged from damaged files at open.", func(s *tbgateway.Stats) uint64 { return s.Salvaged }},
	{"LostOnDisk", "lost_on_disk_total", "Records the queue store found damaged beyond reading at open.", func(s *tbgateway.Stats) uint64 { return s.LostOnDisk }},
	{"Poisoned", "poisoned_total", "Messages set aside as poison.", func(s *tbgateway.Stats) uint64 { return s.Poisoned }},
	{"Isolated", "isolated_total", "Suspected messages taken back to retry their parts alone.", func(s *tbgateway.Stats) uint64 { return s.Isolated }},
	{"PublishErrors", "publish_errors_total", "Publishes the connection refused before sending (re-queued).", func(s *tbgateway.Stats) uint64 { return s.PublishErrors }},
	{"Received", "received_total", "Messages received from the server.", func(s *tbgateway.Stats) uint64 { return s.Received }},
	{"Malformed", "malformed_total", "Received messages that could not be decoded, dropped.", func(s *tbgateway.Stats) uint64 { return s.Malformed }},
	{"Echoes", "echoes_total", "Own publishes a plain broker sent back, ignored.", func(s *tbgateway.Stats) uint64 { return s.Echoes }},
	{"HandlerDropped", "handler_dropped_total", "Received messages dropped because a handler queue was full.", func(s *tbgateway.Stats) uint64 { return s.HandlerDropped }},
	{"DuplicateRPCs", "duplicate_rpcs_total", "RPCs received again while their handler still ran, dropped.", func(s *tbgateway.Stats) uint64 { return s.DuplicateRPCs }},
	{"HandlerPanics", "handler_panics_total", "Handler panics recovered.", func(s *tbgateway.Stats) uint64 { return s.HandlerPanics }},
	{"Reconnects", "reconnects_total", "Successful reconnects after the first connection.", func(s *tbgateway.Stats) uint64 { return s.Reconnects }},
	{"HalfOpen", "half_open_total", "Connections ended because nothing arrived within 1.5 x keep-alive.", func(s *tbgateway.Stats) uint64 { return s.HalfOpen }},
	{"Announced", "announced_total", "Devices announced again on new connections.", func(s *tbgateway.Stats) uint64 { return s.Announced }},
	{"Refreshed", "refreshed_total", "Quiet devices announced again (WithSessionRefresh).", func(s *tbgateway.Stats) uint64 { return s.Refreshed }},
	{"LimitsApplied", "limits_applied_total", "getSessionLimits answers applied.", func(s *tbgateway.Stats) uint64 { return s.LimitsApplied }},
}

// gauges lists the gauges a Collector exports besides connection_state, in
// order. A test fails when an int field of Stats is missing here.
var gauges = []gauge{
	{"Queued", "queue_depth_records", "Records waiting in the outbound queue.", func(s *tbgateway.Stats) int { return s.Queued }},
	{"QueuedBytes", "queue_depth_bytes", "Size of the records waiting in the outbound queue, in bytes.", func(s *tbgateway.Stats) int { return s.QueuedBytes }},
	{"InFlight", "in_flight_messages", "Messages sent and not yet acknowledged.", func(s *tbgateway.Stats) int { return s.InFlight }},
}

// states are the values of connection_state's label state, in order.
var states = []struct {
	State tbgateway.ConnectionState
	Label string
}{
	{tbgateway.StateUp, "up"},
	{tbgateway.StateDown, "down"},
	{tbgateway.StateReconnecting, "reconnecting"},
}

// Option configures a Collector.
type Option func(*config)

type config struct {
	namespace, subsystem string
	labels               prometheus.Labels
}

// WithNamespace sets the metrics' namespace, the first part of their names
// (default "tbgateway"). An empty namespace leaves it out.
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithSubsystem sets the metrics' subsystem, the part of their names after
// the namespace (default none).
func WithSubsystem(s string) Option { return func(c *config) { c.subsystem = s } }

// WithConstLabels adds labels with fixed values to every metric, such as
// the gateway's name. Several calls add up.
func WithConstLabels(l prometheus.Labels) Option {
	return func(c *config) {
		if c.labels == nil {
			c.labels = prometheus.Labels{}
		}
		for k, v := range l {
			c.labels[k] = v
		}
	}
}

// Collector is a prometheus.Collector of one gateway's Stats. Create it
// with NewCollector; it is safe for concurrent use.
type Collector struct {
	g            *tbgateway.Gateway
	counterDescs []*prometheus.Desc // per counters
	gaugeDescs   []*prometheus.Desc // per gauges
	state        *prometheus.Desc
	latency      *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector of g's Stats. Register it with
// prometheus.MustRegister (or a Registry's); its metrics are those the
// package documentation lists.
func NewCollector(g *tbgateway.Gateway, opts ...Option) *Collector {
	cfg := config{namespace: "tbgateway"}
	for _, o := range opts {
		o(&cfg)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(cfg.namespace, cfg.subsystem, name), help, labels, cfg.labels)
	}
	c := &Collector{g: g}
	for _, m := range counters {
		c.counterDescs = append(c.counterDescs, desc(m.Name, m.Help))
	}
	for _, m := range gauges {
		c.gaugeDescs = append(c.gaugeDescs, desc(m.Name, m.Help))
	}
	c.state = desc("connection_state", "The connection's state: 1 for the current state, 0 for the others.", "state")
	c.latency = desc("ack_latency_seconds", "Time from handing a message to the MQTT connection to its acknowledgement.")
	return c
}

// Describe sends the descriptors of all the Collector's metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counterDescs {
		ch <- d
	}
	for _, d := range c.gaugeDescs {
		ch <- d
	}
	ch <- c.state
	ch <- c.latency
}

// Collect takes one Stats snapshot and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	for i, m := range counters {
		ch <- prometheus.MustNewConstMetric(c.counterDescs[i], prometheus.CounterValue, float64(m.Value(&s)))
	}
	for i, m := range gauges {
		ch <- prometheus.MustNewConstMetric(c.gaugeDescs[i], prometheus.GaugeValue, float64(m.Value(&s)))
	}
	for _, st := range states {
		v := 0.0
		if s.State == st.State {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, st.Label)
	}
	count, sum, buckets := histogram(s.AckLatency)
	ch <- prometheus.MustNewConstHistogram(c.latency, count, sum, buckets)
}

// histogram converts h to a Prometheus histogram: the count (the sum of the
// per-bucket counts, including the one above every bound), the sum in
// seconds, and the cumulative counts keyed by upper bound in seconds.
func histogram(h tbgateway.Histogram) (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(h.Bounds))
	for i, b := range h.Bounds {
		if i < len(h.Counts) {
			count += h.Counts[i]
		}
		buckets[b.Seconds()] = count
	}
	for i := len(h.Bounds); i < len(h.Counts); i++ {
		count += h.Counts[i]
	}
	return count, h.Sum.Seconds(), buckets
}
