"""The datasets' facts, stated once.

Everything the original code hard-codes about its data, and which
set-up, the readers, evaluation and the command lines all need: the
categories (setup_*.m's ``Name_batch``), the parts each dataset is
evaluated on (showResults.m's ``partList``) and the goldfish rule
(step_computeStability*.m), ``conf.data.minArea``, the number of shared
negatives (getNegObjSet.m's ``MaxObjNum``) and where each dataset sits under the
data root. (The MatConvNet model files network_init.m loads are a network's
facts: reproduce.models.registry.MODELS.)

This module imports nothing but the standard library, so any layer may
import it (data_prep.setup for downloads, data_prep.readers, reproduce's
evaluation and the command lines).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ILSVRC_CATEGORIES", "ILSVRC_IMAGE_COUNTS", "GOLDFISH", "VOC_CATEGORIES", "CUB_CATEGORIES",
    "TOY_CATEGORIES", "HELEN_CATEGORY", "HELEN_PART_LIST", "HELEN_TRUTH", "CELEBA_ATTRIBUTES", "CELEBA_PART_LIST",
    "CELEBA_TRUTH", "VOC2010_CROP_TRUTH", "CELEBA_TRAIN_VAL_IMAGES", "VOC2010_CROP_IMAGES",
    "DEFAULT_DATASET", "IMAGES_DATASET", "default_category", "datasets_with", "category_samples_objects", "IMAGES_CATEGORY", "IMAGES_TRUTH", "MIN_AREA", "NUM_NEGATIVES", "DatasetFacts", "DATASETS", "DATASET_NAMES", "READER_DATASETS",
    "all_categories", "dataset_facts", "parts_for", "has_parts",
    "ILSVRC_TRUTH", "VOC_TRUTH", "CUB_TRUTH", "VOC_JPEG", "VOC_ANNO",
]

#: setup_ilsvrcanimalpart.m's Name_batch (demo.m's list): the 30 ILSVRC animal categories.
ILSVRC_CATEGORIES: tuple[str, ...] = (
    "n01443537", "n01503061", "n01639765", "n01662784", "n01674464", "n01882714", "n01982650",
    "n02084071", "n02118333", "n02121808", "n02129165", "n02129604", "n02131653", "n02324045",
    "n02342885", "n02355227", "n02374451", "n02391049", "n02395003", "n02398521", "n02402425",
    "n02411705", "n02419796", "n02437136", "n02444819", "n02454379", "n02484322", "n02503517",
    "n02509815", "n02510455")

#: Images per category in github zqs1022/detanimalpart (img/00001.jpg ... img/NNNNN.jpg), from its git tree.
ILSVRC_IMAGE_COUNTS: dict[str, int] = {
    "n01443537": 844, "n01503061": 1494, "n01639765": 179, "n01662784": 193, "n01674464": 144,
    "n01882714": 571, "n01982650": 673, "n02084071": 688, "n02118333": 286, "n02121808": 529,
    "n02129165": 660, "n02129604": 599, "n02131653": 380, "n02324045": 402, "n02342885": 524,
    "n02355227": 276, "n02374451": 752, "n02391049": 679, "n02395003": 240, "n02398521": 581,
    "n02402425": 230, "n02411705": 217, "n02419796": 256, "n02437136": 289, "n02444819": 564,
    "n02454379": 491, "n02484322": 749, "n02503517": 414, "n02509815": 625, "n02510455": 538}

#: step_computeStability*.m: the ILSVRC category (goldfish) evaluated on part 1 only.
GOLDFISH = "n01443537"

#: setup_vocpart.m's Name_batch: the six VOC Part animals.
VOC_CATEGORIES: tuple[str, ...] = ("bird", "cat", "cow", "dog", "horse", "sheep")
#: setup_cub200.m's Name_batch.
CUB_CATEGORIES: tuple[str, ...] = ("cub200",)
#: The generated toy dataset's categories (not in the original; data_prep.toy draws them).
TOY_CATEGORIES: tuple[str, ...] = ("toy01", "toy02", "toy03")

MIN_AREA = 50 ** 2            # conf.data.minArea of every setup_*.m
NUM_NEGATIVES = 1000          # getNegObjSet.m's MaxObjNum: the shared negatives neg/00001.JPEG ... 01000.JPEG

# Where each dataset sits under the data root (the original's ../data, plus its code/data_input truth files).
ILSVRC_TRUTH = "data_input/data_input_DET-2015-subset-ILSVRC2013train"
VOC_TRUTH = "data_input/data_input_VOC"
CUB_TRUTH = "data_input/data_input_CUB-200-2011"
VOC_JPEG = "VOC_part/VOCdevkit/VOC2010/JPEGImages"
VOC_ANNO = "VOC_part/Annotations_Part"
HELEN_TRUTH = "data_input/data_input_helen"     # written by data_prep.setup from Helen's landmarks
HELEN_CATEGORY = "face"                         # Helen's one category (data_prep.helen)
HELEN_PART_LIST = (1, 2, 3, 4)                  # data_prep.helen.HELEN_PARTS: the two eyes, the nose, the mouth
#: CelebA's 40 attributes, in the column order of its list_attr_celeba.txt (data_prep.celeba): its "categories".
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young")
CELEBA_PART_LIST = (1, 2, 3, 4, 5)              # the five landmarks: eyes, nose, mouth corners (data_prep.celeba)
CELEBA_TRUTH = "data_input/data_input_celeba"   # nothing is written there: the landmarks are read from CelebA's list
VOC2010_CROP_TRUTH = "data_input/data_input_voc2010_crop"   # none: voc2010_crop has no part annotations
IMAGES_CATEGORY = "images"                      # the one category of a folder of your own images (data_prep.images)
IMAGES_TRUTH = "data_input"                     # its truth files: <output folder>/data_input/images/truth_partNN.mat


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset: its categories, showResults.m's partList, its folders under the data root, and
    what it has, which the set-up, the imdb, the evaluation and the command lines ask of it (the
    code asks these fields, never the dataset's name: a new dataset is a new row)."""
    name: str
    categories: tuple[str, ...]         # () for 'toy': the generated set's (TOY_CATEGORIES by default)
    part_list: tuple[int, ...]          # showResults.m's partList
    image_dir: str                      # conf.data.imgdir, relative to the data root
    truth_dir: str                      # conf.data.readCode's truth files, relative to the data root
    cate_dir: str | None = None         # conf.data.catedir
    anno_dir: str | None = None         # conf.data.annodir (getPart.m)
    #: the category demo.m and reproduce.paper take when none is given (None: the first)
    default_category: str | None = None
    #: a file every category's folder under image_dir holds ('{category}' is the category), checked before a run
    category_data_file: str | None = None
    #: computeStability.m reads the category's objects with readAnnotation_sampling, and step_drawRF.m
    #: draws its first 500 objects only
    samples_objects: bool = False
    #: generated offline (data_prep.toy), never downloaded; its generator's options (toy_options) are part of it
    generated: bool = False
    #: a folder of your own images (--images DIR; data_prep.images), not under the data root: its parts are
    #: those its --landmarks file names, its part regions its --part-masks label maps
    own_folder: bool = False
    #: set up for the net's input size (generated at that size; landmarks read in the input's crop)
    made_for_input_size: bool = False
    #: > 0: an imdb of whole images with their own split (not getImdb's object crops beside the shared
    #: negatives), at most about this many images (the disk estimate)
    whole_images: int = 0
    #: the labels are yes/no attributes of each image (multi-label: no softmax loss), one net for the chosen
    #: attributes; its parts are landmarks of whole images, measured per attribute on the validation images
    attribute_labels: bool = False
    #: --max-images N takes at most N images of each of its partitions
    image_limit: bool = False
    #: its image lists are per category, each with its own negatives: one net per category (no --multiclass)
    one_net_per_category: bool = False
    #: where its part regions (part interpretability) come from: 'generated-masks' (the generator's label
    #: maps), 'pascal-part' (getPart.m's masks), 'label-maps' (--part-masks DIR); None: part landmarks only
    part_regions: str | None = None
    #: placed by hand (a manual download: data_prep.check says what is missing), never downloaded
    manual_download: bool = False


CELEBA_TRAIN_VAL_IMAGES = 162_770 + 19_867   # CelebA's official training and validation partitions
VOC2010_CROP_IMAGES = 3000              # about the largest of the other port's lists (dog: 2810 lines)
#: demo.m's dataset, and reproduce.paper's default
DEFAULT_DATASET = "ilsvrcanimalpart"
#: the dataset that --images DIR makes: a folder of your own images
IMAGES_DATASET = "images"

#: The datasets demo.m offers, plus "toy": the generated toy dataset, written in the ILSVRC layout.
DATASETS: dict[str, DatasetFacts] = {s.name: s for s in (
    DatasetFacts(DEFAULT_DATASET, ILSVRC_CATEGORIES, (1, 2), "detanimalpart", ILSVRC_TRUTH,
                 default_category="n02118333", category_data_file="{category}_obj/img/data.mat"),
    DatasetFacts("vocpart", VOC_CATEGORIES, (1, 2, 3), VOC_JPEG, VOC_TRUTH, cate_dir="VOC_part",
                 anno_dir=VOC_ANNO, part_regions="pascal-part"),
    DatasetFacts("cub200", CUB_CATEGORIES, (1, 6, 14), "CUB_200_2011/images", CUB_TRUTH,
                 cate_dir="CUB_200_2011", samples_objects=True),
    DatasetFacts("toy", (), (1, 2), "toy/detanimalpart", "toy/data_input", generated=True,
                 made_for_input_size=True, part_regions="generated-masks"),
    # not in the original: Helen faces with landmarks (data_prep.helen; a manual download)
    DatasetFacts("helen", (HELEN_CATEGORY,), HELEN_PART_LIST, "helen", HELEN_TRUTH, manual_download=True),
    # not in the original: CelebA's 40 attributes, one multi-label net (data_prep.celeba; a manual download)
    DatasetFacts("celeba", CELEBA_ATTRIBUTES, CELEBA_PART_LIST, "celeba", CELEBA_TRUTH,
                 whole_images=CELEBA_TRAIN_VAL_IMAGES, attribute_labels=True, image_limit=True,
                 manual_download=True),
    # not in the original: the other port's VOC2010 object crops (data_prep.voc2010_crop; placed by hand).
    # No parts (part_list ()): location stability and part interpretability cannot be measured on it.
    DatasetFacts("voc2010_crop", VOC_CATEGORIES, (), "voc2010_crop", VOC2010_CROP_TRUTH,
                 whole_images=VOC2010_CROP_IMAGES, one_net_per_category=True, manual_download=True),
    # not in the original: a folder of your own images (--images DIR; data_prep.images), the shared negatives.
    # Its parts are those its --landmarks file names (none: binary error only); image_dir is --images DIR.
    DatasetFacts(IMAGES_DATASET, (IMAGES_CATEGORY,), (), "", IMAGES_TRUTH, own_folder=True,
                 made_for_input_size=True, part_regions="label-maps"),
)}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
#: What the readers know (DataConf.dataset): every dataset of DATASETS.
READER_DATASETS: tuple[str, ...] = DATASET_NAMES


def has_parts(name: str) -> bool:
    """Whether the dataset has part positions, so that location stability can be measured on it."""
    return bool(dataset_facts(name).part_list)


def dataset_facts(name: str) -> DatasetFacts:
    """`DATASETS[name]`, or a ValueError naming the valid datasets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def all_categories(name: str) -> tuple[str, ...]:
    """A dataset's categories (setup_*.m's Name_batch; 'toy': TOY_CATEGORIES)."""
    facts = dataset_facts(name)
    return TOY_CATEGORIES if facts.generated else facts.categories


def default_category(name: str) -> str:
    """The category a run takes when none is given: the row's default_category, else its first."""
    facts = dataset_facts(name)
    return facts.default_category or all_categories(name)[0]


def datasets_with(field: str) -> tuple[str, ...]:
    """The names of the datasets whose `field` is set (for messages: 'for the celeba dataset')."""
    return tuple(name for name, facts in DATASETS.items() if getattr(facts, field))


def category_samples_objects(category: str) -> bool:
    """Whether `category` belongs to a dataset whose objects are sampled (DatasetFacts.samples_objects:
    computeStability.m's readAnnotation_sampling, step_drawRF.m's first 500 objects)."""
    return any(facts.samples_objects and category in facts.categories for facts in DATASETS.values())


def parts_for(name: str, category: str | None = None, part_list: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The parts evaluated for one category: showResults.m's partList (`part_list`, default the
    dataset's), with step_computeStability.m's goldfish rule (GOLDFISH: part 1 only)."""
    parts = dataset_facts(name).part_list if part_list is None else tuple(part_list)
    return (1,) if category == GOLDFISH else parts
