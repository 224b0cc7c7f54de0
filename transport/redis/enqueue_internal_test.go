package redis

import "testing"

// A batch stops before the call that would take it past either bound, and
// always takes the first call, however large.
func TestTakeBatchBounds(t *testing.T) {
	calls := func(sizes ...[2]int) []*enqueueCall {
		var out []*enqueueCall
		for _, s := range sizes {
			out = append(out, &enqueueCall{n: s[0], size: s[1]})
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		pending []*enqueueCall
		want    int
	}{
		{"all small", calls([2]int{1, 300}, [2]int{1, 300}, [2]int{1, 300}), 3},
		{"messages", calls([2]int{1000, 1}, [2]int{24, 1}, [2]int{1, 1}), 2},
		{"bytes", calls([2]int{1, 5 << 20}, [2]int{1, 3<<20 + 1}, [2]int{1, 1}), 1},
		{"a huge first call alone", calls([2]int{5000, 100 << 20}, [2]int{1, 1}), 1},
	} {
		pending := tc.pending
		batch := takeBatch(&pending)
		if len(batch) != tc.want || len(pending) != len(tc.pending)-tc.want {
			t.Errorf("%s: took %d, left %d; want %d taken", tc.name, len(batch), len(pending), tc.want)
		}
		if len(batch) > 0 && batch[0] != tc.pending[0] {
			t.Errorf("%s: the first call was not taken first", tc.name)
		}
	}
}
