package tbgateway_test

import (
	"reflect"
	"strings"
	"testing"
	"unicode"

	tb "github.com/thingsgate/tbgateway"
)

// snake turns a Stats field name into the snake_case of its metric:
// DuplicateRPCs → duplicate_rpcs, LostOnDisk → lost_on_disk.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) && unicode.IsLower(rune(s[i-1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// TestStatsMetricsCoverStats fails when Stats gains a field the exporters'
// table does not have, and checks that each entry reads its own field, a
// counter named after it.
func TestStatsMetricsCoverStats(t *testing.T) {
	byField := map[string]tb.StatsMetric{}
	counters := true
	for _, m := range tb.StatsMetrics() {
		if _, dup := byField[m.Field]; dup {
			t.Errorf("Stats.%s listed twice", m.Field)
		}
		if m.Gauge {
			counters = false
		} else if !counters {
			t.Errorf("counter %s after the gauges", m.Name)
		}
		if m.Help == "" {
			t.Errorf("%s has no help", m.Name)
		}
		byField[m.Field] = m
	}

	// A Stats whose every uint64 and int field holds a distinct value.
	var s tb.Stats
	typ := reflect.TypeOf(s)
	v := reflect.ValueOf(&s).Elem()
	for i := range typ.NumField() {
		switch f := v.Field(i); f.Type() {
		case reflect.TypeOf(uint64(0)):
			f.SetUint(uint64(1000 + i))
		case reflect.TypeOf(0):
			f.SetInt(int64(1000 + i))
		}
	}
	seen := map[string]bool{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		seen[f.Name] = true
		m, listed := byField[f.Name]
		switch {
		case f.Name == "State" && f.Type == reflect.TypeOf(tb.ConnectionState(0)):
		case f.Name == "AckLatency" && f.Type == reflect.TypeOf(tb.Histogram{}):
		case f.Type != reflect.TypeOf(uint64(0)) && f.Type != reflect.TypeOf(0):
			t.Errorf("Stats.%s (%s) is exported by no exporter: teach them about it", f.Name, f.Type)
		case !listed:
			t.Errorf("Stats.%s is not in StatsMetrics", f.Name)
		case m.Gauge != (f.Type == reflect.TypeOf(0)):
			t.Errorf("Stats.%s: gauge %v, but its type is %s", f.Name, m.Gauge, f.Type)
		case !m.Gauge && m.Name != snake(f.Name):
			t.Errorf("Stats.%s: metric %q, want %q", f.Name, m.Name, snake(f.Name))
		case m.Value(&s) != uint64(1000+i):
			t.Errorf("%s reads %d, not Stats.%s", m.Name, m.Value(&s), f.Name)
		}
	}
	for name := range byField {
		if !seen[name] {
			t.Errorf("StatsMetrics lists Stats.%s, which does not exist", name)
		}
	}
}
