//! `base::pool::candle_ops_inline` leaves candle no threads of its own (its own process: the
//! pool is made once, by whichever op comes first).
use candle_core::{Device, Tensor};

#[test]
fn candle_runs_elementwise_ops_on_the_calling_thread() {
    std::env::remove_var("CANDLE_NUM_THREADS");
    convnext_explorer::base::pool::candle_ops_inline();
    assert_eq!(candle_core::utils::barrier_pool().n_workers(), 0);
    // An add big enough for candle's split still gives the right answer.
    let n = 256 * 1024;
    let x = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
    let sum: Vec<f32> = (&x + &x).unwrap().to_vec1().unwrap();
    assert!(sum.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));
}
