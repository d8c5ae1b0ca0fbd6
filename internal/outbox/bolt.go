package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	queueBucket  = []byte("queue")
	poisonBucket = []byte("poison")
)

// BoltStore keeps queued records in a bbolt database so that they survive
// a crash: Append writes (and syncs) records before the publish call
// returns, Remove deletes them once acknowledged, in the background so that
// the network goroutine never waits for the disk.
type BoltStore struct {
	db *bolt.DB

	mu      sync.Mutex
	nextSeq uint64
	removes []uint64
	asides  []*Record
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
	err     error
}

// OpenBolt opens (or creates) the store at path and returns the records it
// still holds, oldest first.
func OpenBolt(path string) (*BoltStore, []*Record, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, nil, err
	}
	s := &BoltStore{db: db, wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	var recs []*Record
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(queueBucket)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(poisonBucket); err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			r, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("record %x: %w", k, err)
			}
			r.Seq = binary.BigEndian.Uint64(k)
			s.nextSeq = r.Seq
			recs = append(recs, r)
			return nil
		})
	})
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	go s.run()
	return s, recs, nil
}

func key(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// Append numbers and writes recs in one transaction; concurrent calls share
// a commit (bbolt's Batch), so the cost of the sync is spread.
func (s *BoltStore) Append(recs []*Record) error {
	s.mu.Lock()
	for _, r := range recs {
		s.nextSeq++
		r.Seq = s.nextSeq
	}
	s.mu.Unlock()
	return s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(queueBucket)
		for _, r := range recs {
			if err := b.Put(key(r.Seq), encodeRecord(r)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Remove deletes recs soon, without waiting.
func (s *BoltStore) Remove(recs []*Record) {
	s.mu.Lock()
	for _, r := range recs {
		if r.Seq != 0 {
			s.removes = append(s.removes, r.Seq)
		}
	}
	s.mu.Unlock()
	s.signal()
}

// SetAside moves recs to the poison bucket soon, without waiting.
func (s *BoltStore) SetAside(recs []*Record) {
	s.mu.Lock()
	s.asides = append(s.asides, recs...)
	s.mu.Unlock()
	s.signal()
}

func (s *BoltStore) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *BoltStore) run() {
	defer close(s.stopped)
	for {
		select {
		case <-s.wake:
		case <-s.done:
			s.apply()
			return
		}
		s.apply()
	}
}

// apply writes the pending removals and set-asides in one transaction.
func (s *BoltStore) apply() {
	s.mu.Lock()
	removes, asides := s.removes, s.asides
	s.removes, s.asides = nil, nil
	s.mu.Unlock()
	if len(removes) == 0 && len(asides) == 0 {
		return
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		q, p := tx.Bucket(queueBucket), tx.Bucket(poisonBucket)
		for _, seq := range removes {
			if err := q.Delete(key(seq)); err != nil {
				return err
			}
		}
		for _, r := range asides {
			if r.Seq == 0 {
				continue
			}
			if err := q.Delete(key(r.Seq)); err != nil {
				return err
			}
			if err := p.Put(key(r.Seq), encodeRecord(r)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
	}
}

// Len returns how many records the store holds (for tests and stats).
func (s *BoltStore) Len() (queued, poison int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		queued = tx.Bucket(queueBucket).Stats().KeyN
		poison = tx.Bucket(poisonBucket).Stats().KeyN
		return nil
	})
	return queued, poison, err
}

// Close writes what is pending and closes the database.
func (s *BoltStore) Close() error {
	close(s.done)
	<-s.stopped
	err := s.db.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.err, err)
}

const recordVersion = 1

func encodeRecord(r *Record) []byte {
	b := make([]byte, 0, 2+len(r.Topic)+len(r.Device)+len(r.DeviceName)+len(r.Note)+len(r.Body)+5*binary.MaxVarintLen64)
	b = append(b, recordVersion, byte(r.Kind))
	for _, s := range []string{r.Topic, r.Device, r.DeviceName, r.Note} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(r.Points))
	return append(b, r.Body...)
}

func decodeRecord(b []byte) (*Record, error) {
	if len(b) < 2 || b[0] != recordVersion {
		return nil, errors.New("unknown record format")
	}
	r := &Record{Kind: Kind(b[1])}
	b = b[2:]
	for _, dst := range []*string{&r.Topic, &r.Device, &r.DeviceName, &r.Note} {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, errors.New("truncated record")
		}
		*dst = string(b[k : k+int(n)])
		b = b[k+int(n):]
	}
	p, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, errors.New("truncated record")
	}
	r.Points = int(p)
	r.Body = append([]byte(nil), b[k:]...)
	return r, nil
}
