//! Which models each local worker serves: round-robin, each model on `replication` workers.

/// Assigns `models` to `workers` workers so that each model lands on `replication` distinct
/// workers and the load spreads evenly. Returns one model list per worker.
pub fn place(models: &[String], workers: usize, replication: usize) -> Vec<Vec<String>> {
    let mut plan = vec![Vec::new(); workers];
    let replication = replication.clamp(1, workers.max(1));
    let mut next = 0;
    for model in models {
        for copy in 0..replication {
            plan[(next + copy) % workers].push(model.clone());
        }
        next = (next + 1) % workers;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn every_model_lands_on_replication_distinct_workers() {
        for (models, workers, replication) in
            [(6, 3, 1), (6, 3, 2), (5, 4, 3), (2, 5, 2), (1, 1, 1)]
        {
            let plan = place(&names(models), workers, replication);
            assert_eq!(plan.len(), workers);
            for model in names(models) {
                let holders = plan.iter().filter(|w| w.contains(&model)).count();
                assert_eq!(holders, replication, "{model} in {plan:?}");
            }
            let sizes: Vec<usize> = plan.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= replication, "uneven plan {plan:?}");
        }
    }
}
