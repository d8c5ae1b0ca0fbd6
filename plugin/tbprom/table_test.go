package tbprom

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode"

	"github.com/thingsgate/tbgateway"
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

// TestTableCoversStats fails when tbgateway.Stats gains a field that the
// Collector does not export, and checks that each table entry reads its own
// field and is named after it.
func TestTableCoversStats(t *testing.T) {
	typ := reflect.TypeOf(tbgateway.Stats{})
	byField := map[string]counter{}
	for _, c := range counters {
		if _, dup := byField[c.Field]; dup {
			t.Errorf("counter %s listed twice", c.Field)
		}
		byField[c.Field] = c
	}
	gaugeByField := map[string]gauge{}
	for _, g := range gauges {
		gaugeByField[g.Field] = g
	}

	// A Stats whose every uint64 and int field holds a distinct value.
	var s tbgateway.Stats
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
		if !f.IsExported() {
			continue
		}
		seen[f.Name] = true
		switch {
		case f.Name == "State" && f.Type == reflect.TypeOf(tbgateway.ConnectionState(0)):
		case f.Name == "AckLatency" && f.Type == reflect.TypeOf(tbgateway.Histogram{}):
		case f.Type == reflect.TypeOf(uint64(0)):
			c, ok := byField[f.Name]
			if !ok {
				t.Errorf("Stats.%s (uint64) is not exported as a counter: add it to counters and the package doc", f.Name)
				continue
			}
			if want := snake(f.Name) + "_total"; c.Name != want {
				t.Errorf("Stats.%s: metric %q, want %q", f.Name, c.Name, want)
			}
			if got := c.Value(&s); got != uint64(1000+i) {
				t.Errorf("counter %s reads %d, not Stats.%s", c.Name, got, f.Name)
			}
		case f.Type == reflect.TypeOf(0):
			g, ok := gaugeByField[f.Name]
			if !ok {
				t.Errorf("Stats.%s (int) is not exported as a gauge: add it to gauges and the package doc", f.Name)
				continue
			}
			if got := g.Value(&s); got != 1000+i {
				t.Errorf("gauge %s reads %d, not Stats.%s", g.Name, got, f.Name)
			}
		default:
			t.Errorf("Stats.%s (%s) is not exported: teach the Collector about it", f.Name, f.Type)
		}
	}
	for name := range byField {
		if !seen[name] {
			t.Errorf("counter for Stats.%s, which does not exist", name)
		}
	}
	for name := range gaugeByField {
		if !seen[name] {
			t.Errorf("gauge for Stats.%s, which does not exist", name)
		}
	}
	for _, st := range states {
		if st.Label != st.State.String() {
			t.Errorf("state label %q for %v", st.Label, st.State)
		}
	}
}

func TestHistogram(t *testing.T) {
	h := tbgateway.Histogram{
		Bounds: tbgateway.AckLatencyBounds,
		Counts: make([]uint64, len(tbgateway.AckLatencyBounds)+1),
	}
	h.Counts[0], h.Counts[3], h.Counts[len(h.Counts)-1] = 2, 5, 1
	h.Sum = 1500 * 1e6 // 1.5 s
	count, sum, buckets := histogram(h)
	if count != 8 || sum != 1.5 {
		t.Fatalf("count %d sum %v, want 8 1.5", count, sum)
	}
	if len(buckets) != len(h.Bounds) {
		t.Fatalf("%d buckets, want %d", len(buckets), len(h.Bounds))
	}
	want := map[float64]uint64{0.001: 2, 0.0025: 2, 0.005: 2, 0.01: 7, 10: 7}
	for le, n := range want {
		if buckets[le] != n {
			t.Errorf("bucket le=%v: %d, want %d", le, buckets[le], n)
		}
	}
	if _, _, b := histogram(tbgateway.Histogram{}); len(b) != 0 {
		t.Errorf("empty histogram: %v", b)
	}
}

// TestDocListsMetrics keeps the package documentation's list of names true.
func TestDocListsMetrics(t *testing.T) {
	src, err := os.ReadFile("tbprom.go")
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Join(strings.Fields(strings.ReplaceAll(string(src), "//", " ")), " ")
	names := []string{"connection_state", "ack_latency_seconds"}
	for _, c := range counters {
		names = append(names, c.Name)
	}
	for _, g := range gauges {
		names = append(names, g.Name)
	}
	for _, n := range names {
		if !strings.Contains(doc, "tbgateway_"+n+" ") && !strings.Contains(doc, "tbgateway_"+n+",") {
			t.Errorf("the package doc does not list tbgateway_%s", n)
		}
	}
}
