package main

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"

	"github.com/thingsgate/tbgateway"
)

const (
	baseTS   = int64(1_700_000_000_000)        // the timestamp of every device's first entry
	maxBytes = tbgateway.DefaultMaxPayloadSize // remaining length, as the SDK counts it
)

// dataset is the deterministic data every run sends: key j of entry i of
// device d has a float value for even j and an integer for odd j, so both
// number kinds are on the wire; entry i has the timestamp baseTS+i.
type dataset struct {
	devices []string // names
	quoted  []string // names as JSON strings
	keys    []string // in the SDK's (sorted) order
	entries int

	// The raw runs' payloads, built once.
	naive, packed *payloadSet
	packedQoS     byte
}

// payloadSet holds pre-encoded payloads back to back outside the Go heap,
// so that a raw run's heap, like an SDK run's, holds only what the run
// allocates as it goes: hundreds of megabytes of test data on the heap
// would make the GC run far less often during raw runs than during SDK
// runs.
type payloadSet struct {
	arena []byte
	ends  []byte // little-endian uint64 end offsets into arena, also off the heap
}

func newPayloadSet(ps [][]byte) *payloadSet {
	size := 0
	for _, p := range ps {
		size += len(p)
	}
	s := &payloadSet{}
	s.arena, _ = offHeap(max(size, 1))
	s.ends, _ = offHeap(max(8*len(ps), 1))
	for _, p := range ps {
		s.arena = append(s.arena, p...)
		s.ends = binary.LittleEndian.AppendUint64(s.ends, uint64(len(s.arena)))
	}
	return s
}

func (s *payloadSet) len() int { return len(s.ends) / 8 }

// at returns payload i.
func (s *payloadSet) at(i int) []byte {
	start := uint64(0)
	if i > 0 {
		start = binary.LittleEndian.Uint64(s.ends[8*(i-1):])
	}
	end := binary.LittleEndian.Uint64(s.ends[8*i:])
	return s.arena[start:end:end]
}

func (ds *dataset) naiveSet() *payloadSet {
	if ds.naive == nil {
		ds.naive = newPayloadSet(ds.naivePayloads())
	}
	return ds.naive
}

func (ds *dataset) packedSet(qos byte) *payloadSet {
	if ds.packed == nil || ds.packedQoS != qos {
		ds.packed, ds.packedQoS = newPayloadSet(ds.packedPayloads(qos)), qos
	}
	return ds.packed
}

func newDataset(devices, entries, keys int) *dataset {
	ds := &dataset{entries: entries}
	for d := range devices {
		name := fmt.Sprintf("Device %04d", d)
		ds.devices = append(ds.devices, name)
		ds.quoted = append(ds.quoted, strconv.Quote(name))
	}
	for j := range keys {
		ds.keys = append(ds.keys, "k"+strconv.Itoa(j))
	}
	slices.Sort(ds.keys)
	return ds
}

func (ds *dataset) points() int64 {
	return int64(len(ds.devices)) * int64(ds.entries) * int64(len(ds.keys))
}

// floatValue is never integral, so strconv's shortest form equals the SDK's.
func floatValue(d, i, j int) float64 { return float64((d*7+i*3+j)%100_000)/4 + 0.125 }

func intValue(d, i, j int) int64 { return int64((d*1_000_003 + i*31 + j*7) % 1_000_000) }

// fill sets the values of entry i of device d in v, as an application
// would before a call.
func (ds *dataset) fill(v tbgateway.Values, d, i int) {
	for j, k := range ds.keys {
		if j%2 == 0 {
			v[k] = floatValue(d, i, j)
		} else {
			v[k] = intValue(d, i, j)
		}
	}
}

// fillPoints is fill for an entry of Points.
func (ds *dataset) fillPoints(ps []tbgateway.Point, d, i int) {
	for j, k := range ds.keys {
		if j%2 == 0 {
			ps[j] = tbgateway.Float64(k, floatValue(d, i, j))
		} else {
			ps[j] = tbgateway.Int64(k, intValue(d, i, j))
		}
	}
}

// appendEntry appends entry i of device d exactly as the SDK encodes it:
// {"ts":..,"values":{..}}.
func (ds *dataset) appendEntry(b []byte, d, i int) []byte {
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, baseTS+int64(i), 10)
	b = append(b, `,"values":{`...)
	for j, k := range ds.keys {
		if j > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, k)
		b = append(b, ':')
		if j%2 == 0 {
			b = strconv.AppendFloat(b, floatValue(d, i, j), 'f', -1, 64)
		} else {
			b = strconv.AppendInt(b, intValue(d, i, j), 10)
		}
	}
	return append(b, "}}"...)
}

// naivePayloads is one message per device entry, entries of all devices
// interleaved as they would be produced in real time.
func (ds *dataset) naivePayloads() [][]byte {
	out := make([][]byte, 0, len(ds.devices)*ds.entries)
	for i := range ds.entries {
		for d := range ds.devices {
			b := make([]byte, 0, 48+len(ds.quoted[d])+24*len(ds.keys))
			b = append(b, '{')
			b = append(b, ds.quoted[d]...)
			b = append(b, ":["...)
			b = ds.appendEntry(b, d, i)
			out = append(out, append(b, "]}"...))
		}
	}
	return out
}

// packedPayloads packs the same interleaved entries greedily into messages
// whose MQTT remaining length (topic, packet id, payload) stays within
// maxBytes, entries grouped by device in order of first appearance: the
// rule the SDK packs by.
func (ds *dataset) packedPayloads(qos byte) [][]byte {
	overhead := 2 + len(topic)
	if qos > 0 {
		overhead += 2
	}
	var out [][]byte
	groups := make([][]byte, len(ds.devices)) // per device in this message: its comma-joined entries
	var order []int                           // devices in order of first appearance
	size := overhead + 2
	flush := func() {
		p := make([]byte, 0, size-overhead)
		p = append(p, '{')
		for n, d := range order {
			if n > 0 {
				p = append(p, ',')
			}
			p = append(p, ds.quoted[d]...)
			p = append(p, ":["...)
			p = append(p, groups[d]...)
			p = append(p, ']')
			groups[d] = groups[d][:0]
		}
		out = append(out, append(p, '}'))
		order, size = order[:0], overhead+2
	}
	var entry []byte
	for i := range ds.entries {
		for d := range ds.devices {
			entry = ds.appendEntry(entry[:0], d, i)
			add := 1 + len(entry)
			if len(groups[d]) == 0 {
				add = len(ds.quoted[d]) + 3 + len(entry)
				if len(order) > 0 {
					add++
				}
			}
			if len(order) > 0 && size+add > maxBytes {
				flush()
				add = len(ds.quoted[d]) + 3 + len(entry)
			}
			if len(groups[d]) == 0 {
				order = append(order, d)
			} else {
				groups[d] = append(groups[d], ',')
			}
			groups[d] = append(groups[d], entry...)
			size += add
		}
	}
	if len(order) > 0 {
		flush()
	}
	return out
}
