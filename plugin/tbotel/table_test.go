package tbotel

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode"

	"github.com/thingsgate/tbgateway"
)

// snake turns a Stats field name into the snake_case of its instrument:
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

// TestTableCoversStats fails when tbgateway.Stats gains a field that
// Register does not export, and checks that each table entry reads its own
// field and is named after it.
func TestTableCoversStats(t *testing.T) {
	typ := reflect.TypeOf(tbgateway.Stats{})
	byField := map[string]counter{}
	for _, c := range counters {
		if _, dup := byField[c.field]; dup {
			t.Errorf("counter %s listed twice", c.field)
		}
		byField[c.field] = c
	}
	gaugeByField := map[string]gauge{}
	for _, g := range gauges {
		gaugeByField[g.field] = g
	}

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
			if want := snake(f.Name); c.name != want {
				t.Errorf("Stats.%s: instrument %q, want %q", f.Name, c.name, want)
			}
			if got := c.value(&s); got != uint64(1000+i) {
				t.Errorf("counter %s reads %d, not Stats.%s", c.name, got, f.Name)
			}
		case f.Type == reflect.TypeOf(0):
			g, ok := gaugeByField[f.Name]
			if !ok {
				t.Errorf("Stats.%s (int) is not exported as a gauge: add it to gauges and the package doc", f.Name)
				continue
			}
			if got := g.value(&s); got != 1000+i {
				t.Errorf("gauge %s reads %d, not Stats.%s", g.name, got, f.Name)
			}
		default:
			t.Errorf("Stats.%s (%s) is not exported: teach Register about it", f.Name, f.Type)
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
		if st.label != st.state.String() {
			t.Errorf("state label %q for %v", st.label, st.state)
		}
	}
}

// TestDocListsInstruments keeps the package documentation's list of names
// true.
func TestDocListsInstruments(t *testing.T) {
	src, err := os.ReadFile("tbotel.go")
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Join(strings.Fields(strings.ReplaceAll(string(src), "//", " ")), " ")
	names := []string{"connection_state", "ack_latency.count", "ack_latency.sum", "ack_latency.bucket"}
	for _, c := range counters {
		names = append(names, c.name)
	}
	for _, g := range gauges {
		names = append(names, g.name)
	}
	for _, n := range names {
		if !strings.Contains(doc, "tbgateway."+n+" ") && !strings.Contains(doc, "tbgateway."+n+",") {
			t.Errorf("the package doc does not list tbgateway.%s", n)
		}
	}
}

func TestCumulative(t *testing.T) {
	h := tbgateway.Histogram{Bounds: tbgateway.AckLatencyBounds, Counts: make([]uint64, len(tbgateway.AckLatencyBounds)+1)}
	h.Counts[0], h.Counts[3], h.Counts[len(h.Counts)-1] = 2, 5, 1
	c := cumulative(h)
	if len(c) != len(h.Bounds)+1 || c[0] != 2 || c[2] != 2 || c[3] != 7 || c[len(c)-2] != 7 || c[len(c)-1] != 8 {
		t.Errorf("cumulative %v", c)
	}
	if c := cumulative(tbgateway.Histogram{}); len(c) != 1 || c[0] != 0 {
		t.Errorf("empty: %v", c)
	}
}
